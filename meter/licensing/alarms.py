"""Alarms: raised and cleared with a reason, listed by the API, the CLI and metrics.

Alarm IDs are a small fixed family (they become metric label values): ``capacity-node`` and
``capacity-cluster`` (P4), ``restart-required`` (K3), ``license-exhausted-<type>`` (C2, R11),
``peer-lost-<peer>`` (P2; the only one whose ID carries a name, bounded by the six peers a
cluster can have), ``cluster-store-unreachable`` (P1: the shared pool's store is down, so each node
charges within its share or fails closed, ``meter.cluster.redis_pool``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

# Raised/cleared events kept for the API; enough to show the last day of a flapping alarm
# without growing without bound.
HISTORY_LIMIT = 256


@dataclass(frozen=True, slots=True)
class Alarm:
    id: str
    rule: str           # the rule that defines it (P4, K3...)
    severity: str       # "warning" or "error"
    reason: str         # why it was raised, in words
    raised_at: float
    cleared_at: float | None = None
    cleared_reason: str = ""

    @property
    def active(self) -> bool:
        return self.cleared_at is None


class AlarmBoard:
    """Active alarms by ID and a bounded history. ``on_change`` persists (see store.py)."""

    def __init__(self, on_change: Callable[[Alarm], None] | None = None) -> None:
        self._active: dict[str, Alarm] = {}
        self.history: deque[Alarm] = deque(maxlen=HISTORY_LIMIT)
        self.on_change = on_change

    def raise_(self, alarm_id: str, rule: str, reason: str, now: float, severity: str = "warning") -> bool:
        """Raise ``alarm_id``; True if it was not already active (an active one keeps its first reason)."""
        if alarm_id in self._active:
            return False
        alarm = Alarm(id=alarm_id, rule=rule, severity=severity, reason=reason, raised_at=now)
        self._active[alarm_id] = alarm
        self._record(alarm)
        return True

    def clear(self, alarm_id: str, reason: str, now: float) -> bool:
        """Clear ``alarm_id``; True if it was active."""
        alarm = self._active.pop(alarm_id, None)
        if alarm is None:
            return False
        self._record(replace(alarm, cleared_at=now, cleared_reason=reason))
        return True

    def is_active(self, alarm_id: str) -> bool:
        return alarm_id in self._active

    def active(self) -> list[Alarm]:
        return sorted(self._active.values(), key=lambda a: (a.raised_at, a.id))

    def restore(self, alarms: list[Alarm]) -> None:
        """Load persisted active alarms at start-up (no on_change echo)."""
        for alarm in alarms:
            if alarm.active:
                self._active[alarm.id] = alarm

    def _record(self, alarm: Alarm) -> None:
        self.history.append(alarm)
        if self.on_change is not None:
            self.on_change(alarm)
