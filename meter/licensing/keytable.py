"""The installed option keys (K1, K3-K6, L3). Pure: the store persists the rows.

Keys are kept by index. The first 65 by index are applied; a 66th and later key is listed as
added but not processed (K4, CSCvf78728). ``xConfiguration Option [1..64] Key`` writes one index
and overwrites a key there, whose feature is then lost; keys added without an index take the
lowest free index, which may lie above 64 (that is how a 66th key can exist at all).

Time-limited (demo) keys stop granting at expiry (K5). The seed warns that while an expired demo
key for an option stays installed, that option's *feature* stops even beside a permanent key
("remove the demo key and restart, or the feature stops when it expires"); the meter reproduces
that for feature options. For quantity options only the demo's own quantity stops.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from meter.licensing.keys import REASONS, KeyRefused, OptionKey, verify_key
from meter.licensing.options import OPTIONS

APPLIED_LIMIT = 65            # K4: only the first 65 keys are processed (CSCvf78728)
CLI_INDEXES = range(1, 65)    # K4: xConfiguration Option [1..64] Key


class Installed(NamedTuple):
    index: int
    text: str
    added_at: float
    pending_restart: bool   # K3: added, waiting for a restart
    key: OptionKey | None   # None when it no longer verifies
    problem: str            # keys.REASONS key when ``key`` is None


class KeyStatus(NamedTuple):
    index: int
    option: str
    title: str
    quantity: int
    expires: float | None
    state: str   # active | expired | pending_restart | masked | inert | invalid | no_effect_smart
    detail: str
    key_id: str
    text: str


class Grants(NamedTuple):
    quantities: dict[str, int]   # License -> licenses from keys in force
    features: frozenset[str]     # option codes of features in force


class AddResult(NamedTuple):
    index: int
    key: OptionKey
    warnings: tuple[str, ...]
    pending_restart: bool


class OptionKeyTable:
    def __init__(self, public_key, serial: str) -> None:
        self.public_key = public_key
        self.serial = serial
        self._rows: dict[int, Installed] = {}

    # ---- persistence --------------------------------------------------------------------

    def load(self, rows: Iterable[tuple[int, str, float, bool]]) -> None:
        """Install stored rows, re-verifying each (expired keys stay listed, K5)."""
        self._rows.clear()
        for index, text, added_at, pending in rows:
            try:
                key, problem = verify_key(self.public_key, self.serial, text, float("-inf")), ""
            except KeyRefused as exc:
                key, problem = None, exc.reason
            self._rows[index] = Installed(index, text, added_at, bool(pending), key, problem)

    def rows(self) -> list[Installed]:
        return [self._rows[i] for i in sorted(self._rows)]

    # ---- changes ------------------------------------------------------------------------

    def add(self, text: str, now: float, *, index: int | None = None, smart_mode: bool = False) -> AddResult:
        """Verify and install ``text``. Raises keys.KeyRefused (the key is not installed) or
        ValueError (an index outside 1..64)."""
        if index is not None and index not in CLI_INDEXES:
            raise ValueError(f"K4: option index must be 1..64, got {index}")
        key = verify_key(self.public_key, self.serial, text, now, smart_mode=smart_mode)
        for row in self._rows.values():
            if row.key is not None and row.key.key_id == key.key_id and row.index != index:
                raise KeyRefused("duplicate", f"at index {row.index}")
        warnings = []
        if index is None:
            index = next(i for i in range(1, len(self._rows) + 2) if i not in self._rows)
        elif index in self._rows:
            old = self._rows[index]
            what = old.key.option if old.key is not None else "an invalid key"
            warnings.append(f"K4: overwrote option {index} ({what}); the feature it granted is lost")
        option = OPTIONS[key.option]
        if not key.demo:
            for row in self._rows.values():
                if row.key is not None and row.key.option == key.option and row.key.demo and row.index != index:
                    warnings.append(
                        f"K5: a time-limited key for {option.title} is installed at option {row.index}: "
                        f"remove it and restart, or {option.title} stops when it expires")
        pending = option.restart
        if pending:
            warnings.append(f"K3: {option.title} takes effect after a restart; alarm 'restart required' stands until then")
        self._rows[index] = Installed(index, key.text, now, pending, key, "")
        if self._rank(index) > APPLIED_LIMIT:
            warnings.append(f"K4: listed but not processed: only the first {APPLIED_LIMIT} option keys "
                            f"apply (CSCvf78728)")
        return AddResult(index, key, tuple(warnings), pending)

    def remove(self, index: int) -> Installed | None:
        return self._rows.pop(index, None)

    def node_started(self) -> list[int]:
        """K3: a (re)start brings restart-pending keys into force. Returns their indexes."""
        started = [i for i, row in self._rows.items() if row.pending_restart]
        for i in started:
            self._rows[i] = self._rows[i]._replace(pending_restart=False)
        return sorted(started)

    # ---- views --------------------------------------------------------------------------

    def restart_pending(self) -> bool:
        return any(row.pending_restart for row in self._applied())

    def _rank(self, index: int) -> int:
        return sorted(self._rows).index(index) + 1

    def _applied(self) -> list[Installed]:
        return [self._rows[i] for i in sorted(self._rows)[:APPLIED_LIMIT]]

    def _masked_features(self, now: float) -> set[str]:
        # K5: an expired demo key still installed stops its feature, even beside a permanent key.
        return {row.key.option for row in self._applied()
                if row.key is not None and row.key.expired(now) and OPTIONS[row.key.option].license is None}

    def grants(self, now: float, *, smart_mode: bool = False) -> Grants:
        if smart_mode:
            return Grants({}, frozenset())  # L3: keys have no effect
        quantities: dict[str, int] = {}
        features: set[str] = set()
        for row in self._applied():
            key = row.key
            if key is None or row.pending_restart or key.expired(now):
                continue
            option = OPTIONS[key.option]
            if option.license is not None:
                quantities[option.license] = quantities.get(option.license, 0) + key.quantity
            else:
                features.add(key.option)
        return Grants(quantities, frozenset(features - self._masked_features(now)))

    def next_change(self, now: float) -> float | None:
        """When the grants next change by themselves (a demo key expiring), or None."""
        times = [row.key.expires for row in self._applied()
                 if row.key is not None and row.key.expires is not None and row.key.expires > now]
        return min(times, default=None)

    def statuses(self, now: float, *, smart_mode: bool = False) -> list[KeyStatus]:
        applied = {row.index for row in self._applied()}
        masked = self._masked_features(now)
        out = []
        for row in self.rows():
            key = row.key
            if key is None:
                out.append(KeyStatus(row.index, "?", "?", 0, None, "invalid", REASONS.get(row.problem, row.problem),
                                     "", row.text))
                continue
            option = OPTIONS[key.option]
            if smart_mode:
                state, detail = "no_effect_smart", "Smart licensing active (L3)"
            elif row.index not in applied:
                state, detail = "inert", f"beyond the first {APPLIED_LIMIT} keys (K4, CSCvf78728)"
            elif key.expired(now):
                state, detail = "expired", "time-limited key expired (K5)"
            elif row.pending_restart:
                state, detail = "pending_restart", "takes effect after a restart (K3)"
            elif key.option in masked:
                state, detail = "masked", "an expired time-limited key for this option is installed (K5)"
            else:
                state, detail = "active", ""
            out.append(KeyStatus(row.index, key.option, option.title, key.quantity, key.expires, state, detail,
                                 key.key_id, row.text))
        return out
