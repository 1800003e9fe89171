"""The ledger: what one node has charged, against its pools and its physical capacity.

Every charge is keyed by the call or registration it belongs to and has exactly one release
(docs/design.md principle 4): ``release`` is idempotent, and no count ever goes below zero. RMS is
kept in half units so two audio-only SIP calls share one license (C4); an audio-only SIP call is
charged as video while it is set up and settled once set-up completes (C6), after which its class
is frozen (C7). Registered calls take no RMS but occupy the node like any other call (C1 note,
P3). The ledger's *enforcement*: ``enforce`` refuses what does not fit; ``observe`` lets
everything through. Either way each misfit is counted here, once, by (license, reason,
enforcement): the reasons and their words are ``meter.licensing.refusals``.

Hot path: ``charge``/``release``/``settle`` are dict operations and integer arithmetic plus two
pool queries (O(peers), at most six); nothing here allocates beyond one small entry and one
Decision per charge.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from meter.licensing.alarms import Alarm, AlarmBoard
from meter.licensing.model import POOLED, RMS_HALF_UNITS, UNIT_SCALE, Kind, License, Media
from meter.licensing.platforms import Platform
from meter.licensing.pool import OUTAGE_FAIL_CLOSED, LicensePool, MemoryPool
from meter.licensing.refusals import REFUSALS, Refusal
from meter.licensing.usage import UsageMeter

ENFORCE, OBSERVE = "enforce", "observe"
ENFORCEMENTS = (ENFORCE, OBSERVE)  # the `enforcement` label of meter_refusals_total
_EXHAUSTED = {lic: f"{lic}_exhausted" for lic in POOLED}
_REGISTRATION_KINDS = (Kind.REGISTRATION, Kind.MRA_REGISTRATION)
# P4: the capacity alarm stands at 90% of capacity. It clears 5 points lower, so a node hovering
# at 90% does not raise and clear it (and persist both) on every other call.
ALARM_PERCENT = 90
ALARM_CLEAR_PERCENT = 85
STORE_OUTAGE_ALARM = "cluster-store-unreachable"


class Decision(NamedTuple):
    ok: bool                # go ahead (always True when observing)
    reason: str             # "" when it fits, else a key of refusals.REFUSALS
    rules: tuple[str, ...]  # the charge's rules, plus the one that refused when it did not fit
    license: str
    units: int
    observed: bool = False  # observing let through what enforcing would have refused

    @property
    def refused(self) -> bool:
        return not self.ok

    @property
    def refusal(self) -> Refusal | None:
        """The reason's row of the refusal table (None when it fitted): its words and answers."""
        return REFUSALS.get(self.reason)

    @property
    def text(self) -> str:
        """Words for the reason ('' when it fitted), for the API and logs."""
        refusal = self.refusal
        return refusal.text if refusal is not None else ""


class _Entry:
    __slots__ = ("license", "units", "kind", "count", "phys", "media", "rules", "settled")

    def __init__(self, license, units, kind, count, phys, media, rules):
        self.license = license
        self.units = units
        self.kind = kind
        self.count = count      # calls: 1; registrations: aliases (R9)
        self.phys = phys        # calls: weight units (platforms.py); registrations: aliases
        self.media = media
        self.rules = rules
        self.settled = False


@dataclass(frozen=True)
class PoolUsage:
    license: str
    in_use: float          # licenses used on this node (RMS: half units / 2)
    in_use_cluster: float  # this node plus the live peers
    capacity: int          # licenses in the cluster pool (P1, P2)


@dataclass(frozen=True)
class Snapshot:
    """Everything metrics and the API show about the ledger at one moment."""

    node: str
    role: str
    enforcement: str
    at: float
    licenses: dict[str, PoolUsage]
    calls: int
    calls_by_media: dict[str, int]
    calls_by_license: dict[str, int]
    call_load: float             # fraction of the node's physical call capacity (P3, P4)
    call_capacity: int           # video calls
    registrations: int
    registration_capacity: int
    mra_registrations: int
    mra_registration_capacity: int
    refusals: dict[str, int]      # refused (enforce), by reason
    would_refuse: dict[str, int]  # let through while observing, by reason
    alarms: list[Alarm] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Ledger:
    def __init__(
        self,
        node: str,
        role: str,
        platform: Platform,
        *,
        pool: LicensePool | None = None,
        enforcement: str = ENFORCE,
        alarms: AlarmBoard | None = None,
        now: float = 0.0,
        usage: UsageMeter | None = None,
    ) -> None:
        _check_enforcement(enforcement)
        self.node, self.role, self.platform, self.enforcement = node, role, platform, enforcement
        self.pool = pool if pool is not None else MemoryPool()
        self.alarms = alarms if alarms is not None else AlarmBoard()
        self.pool.join(node, now, call_capacity=platform.calls_video)
        self._now = now
        self._entries: dict[Hashable, _Entry] = {}
        self._in_use: dict[str, int] = {lic: 0 for lic in POOLED}
        self._call_units = 0
        self._call_cap = platform.call_units
        self._regs = 0
        self._mra = 0
        self._rms_peer_cap = platform.max_rms_per_peer * UNIT_SCALE[License.RMS]
        self._calls_by_media: dict[str, int] = {m: 0 for m in Media}
        self._calls_by_license: dict[str, int] = {lic: 0 for lic in License}
        # Misfits by (license, reason, enforcement): the one count of refusals (meter_refusals_total).
        self.refusals: Counter[tuple[str, str, str]] = Counter()
        self._blocked = ""
        self._node_hot = False
        self._exhausted: set[str] = set()
        self._node_name = node
        self._set_usage = self.pool.set_usage  # bound once: called on every charge and release
        # Peaks taken at every charge, never sampled (meter.licensing.usage); None: not kept.
        self.usage: UsageMeter | None = None
        if usage is not None:
            self.attach_usage(usage)

    def attach_usage(self, usage: UsageMeter) -> UsageMeter:
        """Account this ledger's changes in ``usage`` from now on, starting from what it holds now."""
        self.usage = usage
        for lic in POOLED:
            usage.license_changed(lic, self._in_use[lic], self._now)
        for media, count in self._calls_by_media.items():
            for _ in range(count):
                usage.call_changed(media, 1, self._now)
        self._publish_usage(self._now)
        return usage

    def _publish_usage(self, now: float) -> None:
        # Off the hot path (tick, new licenses): the peers' last published usage and the pool's size.
        usage = self.usage
        if usage is None:
            return
        for lic in POOLED:
            usage.peers_published(lic, self.pool.usage_elsewhere(lic, now, self.node),
                                  self.pool.capacity(lic, now, self.node), now)

    # ---- licenses and enforcement -------------------------------------------------------

    def set_licenses(self, quantities: Mapping[str, int], now: float) -> None:
        """This node's own licenses (from its option keys), contributed to the cluster pool (P1)."""
        self._now = now
        self.pool.contribute(self.node, {str(k): v for k, v in quantities.items()}, now)
        self._publish_usage(now)

    def set_enforcement(self, enforcement: str) -> None:
        _check_enforcement(enforcement)
        self.enforcement = enforcement

    def block_registrations(self, reason: str) -> None:
        """Refuse every new registration (R11; S2 sets it when Smart evaluation expired). '' lifts it."""
        self._blocked = reason

    # ---- the hot path -------------------------------------------------------------------

    def charge_call(self, call_key: Hashable, charge, now: float) -> Decision:
        """Charge a classified call (``calls.CallCharge``), normally at its first INVITE/Setup."""
        return self.charge(call_key, charge.license, charge.units, now,
                           kind=Kind.CALL if charge.physical else Kind.NONE,
                           media=charge.media, rules=charge.rules)

    def charge_registration(self, reg_key: Hashable, charge, now: float) -> Decision:
        """Charge a classified registration (``registrations.RegistrationCharge``)."""
        return self.charge(reg_key, charge.license, charge.units, now,
                           kind=charge.kind, count=charge.aliases, rules=charge.rules)

    def charge(
        self,
        owner_key: Hashable,
        license: str,
        units: int,
        now: float,
        *,
        kind: str = Kind.NONE,
        media: str = Media.VIDEO,
        count: int = 1,
        rules: tuple[str, ...] = (),
    ) -> Decision:
        """Charge ``units`` of ``license`` to ``owner_key``; charging a key again replaces its charge."""
        if units < 0 or count < 0:
            raise ValueError(f"units and count must be >= 0, got {units}, {count}")
        if license not in self._calls_by_license:
            raise ValueError(f"license: expected one of {[str(x) for x in License]}, got {license!r}")
        self._now = now
        if kind == Kind.CALL:
            if media not in self._calls_by_media:
                raise ValueError(f"media: expected one of {[str(x) for x in Media]}, got {media!r}")
            phys = count * self.platform.call_weight(media)
        elif kind == Kind.REGISTRATION or kind == Kind.MRA_REGISTRATION:
            phys = count
        else:
            phys = 0
        if license == License.NONE:
            units = 0
        old = self._entries.get(owner_key)
        reason = self._misfit(old, license, units, kind, phys, now)
        observed = False
        if reason:
            if reason in ("rms_exhausted", "room_exhausted", "desktop_exhausted", "cmr_exhausted"):
                self._exhausted_alarm(license, now)
            self.refusals[(str(license), reason, self.enforcement)] += 1
            if self.usage is not None:
                self.usage.refusal(str(license), self.enforcement != ENFORCE)
            if self.enforcement == ENFORCE:
                return Decision(False, reason, rules + (REFUSALS[reason].rule,), license, units)
            observed = True
        if old is not None:
            self._remove(old)
        entry = _Entry(license, units, kind, count, phys, media, rules)
        self._entries[owner_key] = entry
        self._add(entry)
        if observed:
            return Decision(True, reason, rules + (REFUSALS[reason].rule,), license, units, True)
        return Decision(True, "", rules, license, units)

    def settle(self, call_key: Hashable, final, now: float) -> Decision | None:
        """Set-up complete: charge the call for its real class, once (C6); later calls change nothing (C7).

        ``final`` is the ``CallCharge`` classified with the negotiated m= line count, or a ``Media``.
        Settling never refuses: the call is already up, and C6 only ever lowers a charge.
        Returns None for an unknown key (already released).
        """
        entry = self._entries.get(call_key)
        if entry is None:
            return None
        self._now = now
        if entry.settled:  # C7: no optimisation during the call
            return Decision(True, "", entry.rules + ("C7",), entry.license, entry.units)
        if isinstance(final, tuple):  # a CallCharge
            media, units, rules = final.media, final.units, final.rules
            if final.license != entry.license:
                units = entry.units  # same call, same payer: only the class can change at settle
        else:
            media, rules = Media(final), entry.rules
            units = RMS_HALF_UNITS[media] if entry.license == License.RMS and entry.units else entry.units
        self._remove(entry)
        entry.media, entry.units, entry.rules, entry.settled = media, units, rules, True
        if entry.kind == Kind.CALL:
            entry.phys = entry.count * self.platform.call_weight(media)
        self._add(entry)
        return Decision(True, "", rules + ("C7",), entry.license, units)

    def release(self, owner_key: Hashable, now: float | None = None) -> bool:
        """Release ``owner_key``'s charge. Idempotent: False when there was nothing to release."""
        entry = self._entries.pop(owner_key, None)
        if entry is None:
            return False
        if now is not None:
            self._now = now
        self._remove(entry)
        if self._exhausted and entry.license in self._exhausted:
            self._maybe_clear_exhausted(entry.license)
        return True

    def release_all(self, now: float) -> int:
        """Node shutdown: release every charge (docs/design.md principle 4). Returns how many."""
        keys = list(self._entries)
        for key in keys:
            self.release(key, now)
        return len(keys)

    # ---- internals ----------------------------------------------------------------------

    def _misfit(self, old: _Entry | None, license: str, units: int, kind: str, phys: int, now: float) -> str:
        """'' when the charge fits, else the first reason it does not."""
        if old is not None and old.license == license and old.kind == kind \
                and units <= old.units and phys <= old.phys:
            return ""  # shrinking (or repeating) a charge always fits
        if kind == Kind.CALL:
            used = self._call_units - (old.phys if old is not None and old.kind == Kind.CALL else 0)
            if used + phys > self._call_cap:
                return "node_call_capacity"  # P3, R6 below: physical limits come first
        elif kind == Kind.REGISTRATION or kind == Kind.MRA_REGISTRATION:
            held = old is not None and old.kind in _REGISTRATION_KINDS
            if self._blocked and not held:
                return "registrations_blocked"
            if self._regs - (old.phys if held else 0) + phys > self.platform.registrations:
                return "node_registration_capacity"
            if kind == Kind.MRA_REGISTRATION:
                mra = self._mra - (old.phys if held and old.kind == Kind.MRA_REGISTRATION else 0)
                if mra + phys > self.platform.mra_registrations:
                    return "node_mra_registration_capacity"
        if units and license != License.NONE:
            mine = self._in_use[license] - (old.units if old is not None and old.license == license else 0)
            if license == License.RMS and mine + units > self._rms_peer_cap:
                return "peer_rms_limit"
            capacity = self.pool.capacity(license, now, self.node) * UNIT_SCALE[license]
            # P1: the pool less what the other peers hold (during a store outage, their share).
            if mine + self.pool.reserved_elsewhere(license, now, self.node, capacity) + units > capacity:
                return _EXHAUSTED[license]
        return ""

    def _add(self, entry: _Entry) -> None:
        self._shift(entry, 1)

    def _remove(self, entry: _Entry) -> None:
        self._shift(entry, -1)

    def _shift(self, entry: _Entry, sign: int) -> None:
        # Counters only move by what an entry added, so they cannot go below zero; the clamps
        # guard against a bug elsewhere turning into negative metrics.
        units = entry.units
        if units:
            license = entry.license
            value = self._in_use[license] + sign * units
            if value < 0:
                value = 0
            self._in_use[license] = value
            self._set_usage(self._node_name, license, value)
            if self.usage is not None:
                self.usage.license_changed(license, value, self._now)
        kind = entry.kind
        if kind == Kind.CALL:
            call_units = self._call_units + sign * entry.phys
            self._call_units = call_units if call_units > 0 else 0
            by_media, by_license = self._calls_by_media, self._calls_by_license
            count = by_media[entry.media] + sign
            by_media[entry.media] = count if count > 0 else 0
            count = by_license[entry.license] + sign
            by_license[entry.license] = count if count > 0 else 0
            if self.usage is not None:
                self.usage.call_changed(entry.media, sign, self._now)
            if self._node_hot:
                if self._call_units * 100 < self._call_cap * ALARM_CLEAR_PERCENT:
                    self._node_alarm(False)
            elif self._call_units * 100 >= self._call_cap * ALARM_PERCENT:
                self._node_alarm(True)
        elif kind == Kind.REGISTRATION or kind == Kind.MRA_REGISTRATION:
            regs = self._regs + sign * entry.phys
            self._regs = regs if regs > 0 else 0
            if kind == Kind.MRA_REGISTRATION:
                mra = self._mra + sign * entry.phys
                self._mra = mra if mra > 0 else 0

    def _node_alarm(self, hot: bool) -> None:
        # P4: any one node at 90% of its physical capacity.
        self._node_hot = hot
        percent = 100 * self._call_units // self._call_cap
        if hot:
            self.alarms.raise_("capacity-node", "P4",
                               f"node {self.node} at {percent}% of its physical call capacity "
                               f"({self.platform.name}: {self.platform.calls_video} video calls)", self._now)
        else:
            self.alarms.clear("capacity-node", f"node {self.node} back under {ALARM_CLEAR_PERCENT}% ({percent}%)",
                              self._now)

    def _exhausted_alarm(self, license: str, now: float) -> None:
        self._exhausted.add(license)
        self.alarms.raise_(f"license-exhausted-{license}", "R11" if license in ("room", "desktop") else "C2",
                           f"{license} licenses exhausted: a charge did not fit the cluster pool", now,
                           severity="error")

    def _maybe_clear_exhausted(self, license: str) -> None:
        capacity = self.pool.capacity(license, self._now, self.node) * UNIT_SCALE[license]
        used = self._in_use[license] + self.pool.reserved_elsewhere(license, self._now, self.node, capacity)
        if used < capacity:
            self._exhausted.discard(license)
            self.alarms.clear(f"license-exhausted-{license}", f"{license} licenses available again", self._now)

    # ---- periodic work and views ----------------------------------------------------------

    def tick(self, now: float) -> None:
        """Call every few seconds: heartbeat, publish this node's call load, cluster capacity
        alarm (P4, from the loads peers published at their last tick), lost peers (P2), the
        shared store's outage (P1)."""
        self._now = now
        self.pool.heartbeat(self.node, now)
        self.pool.set_load(self.node, self._call_units / self.platform.calls_audio)
        load, capacity = self.pool.cluster_load(now, self.node)
        percent = 100 * load / capacity if capacity else 0.0
        if percent >= ALARM_PERCENT:
            self.alarms.raise_("capacity-cluster", "P4",
                               f"cluster at {percent:.0f}% of its call capacity ({capacity} video calls)", now)
        elif percent < ALARM_CLEAR_PERCENT:
            self.alarms.clear("capacity-cluster", f"cluster back under {ALARM_CLEAR_PERCENT}% ({percent:.0f}%)", now)
        for peer in self.pool.peers(now):
            if peer.name == self.node:
                continue
            alarm_id = f"peer-lost-{peer.name}"
            if peer.alive:
                self.alarms.clear(alarm_id, f"peer {peer.name} reachable again", now)
            elif peer.licenses_until is not None and now <= peer.licenses_until:
                self.alarms.raise_(alarm_id, "P2",
                                   f"peer {peer.name} unreachable since {peer.last_seen:.0f}; its licenses "
                                   f"leave the pool at {peer.licenses_until:.0f}", now)
            else:
                self.alarms.clear(alarm_id, f"peer {peer.name}'s licenses left the pool (P2)", now)
        self._outage_alarm(now)
        self._publish_usage(now)
        for license in list(self._exhausted):
            self._maybe_clear_exhausted(license)

    def _outage_alarm(self, now: float) -> None:
        # P1 during a store outage: the alarm says how this node charges until the store is back.
        outage = self.pool.outage()
        if outage is None:
            self.alarms.clear(STORE_OUTAGE_ALARM, "cluster store reachable again: the whole pool is shared", now)
            return
        if outage.policy == OUTAGE_FAIL_CLOSED:
            how = "new pooled licenses are refused until it is back (fail_closed)"
        else:
            how = (f"this node charges at most its share of what was free at the last sync "
                   f"(1 of {outage.live_peers} live peers; P1, P2)")
        self.alarms.raise_(STORE_OUTAGE_ALARM, "P1",
                           f"cluster store unreachable since {outage.since:.0f}: {how}", now, severity="error")

    def in_use(self, license: str) -> int:
        """Units of ``license`` used on this node (RMS in half units)."""
        return self._in_use.get(license, 0)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, owner_key: Hashable) -> bool:
        return owner_key in self._entries

    def snapshot(self, now: float) -> Snapshot:
        refused: dict[str, dict[str, int]] = {ENFORCE: {}, OBSERVE: {}}
        for (_, reason, enforcement), count in self.refusals.items():
            by_reason = refused[enforcement]
            by_reason[reason] = by_reason.get(reason, 0) + count
        licenses = {}
        for lic in POOLED:
            scale = UNIT_SCALE[lic]
            mine = self._in_use[lic]
            licenses[lic] = PoolUsage(
                license=lic,
                in_use=mine / scale,
                in_use_cluster=(mine + self.pool.usage_elsewhere(lic, now, self.node)) / scale,
                capacity=self.pool.capacity(lic, now, self.node),
            )
        return Snapshot(
            node=self.node, role=self.role, enforcement=self.enforcement, at=now, licenses=licenses,
            calls=sum(self._calls_by_media.values()),
            calls_by_media={str(k): v for k, v in self._calls_by_media.items()},
            calls_by_license={str(k): v for k, v in self._calls_by_license.items()},
            call_load=self._call_units / self._call_cap,
            call_capacity=self.platform.calls_video,
            registrations=self._regs, registration_capacity=self.platform.registrations,
            mra_registrations=self._mra, mra_registration_capacity=self.platform.mra_registrations,
            refusals=refused[ENFORCE], would_refuse=refused[OBSERVE],
            alarms=self.alarms.active(),
        )


def _check_enforcement(enforcement: str) -> None:
    if enforcement not in ENFORCEMENTS:
        raise ValueError(f"enforcement: expected one of {ENFORCEMENTS}, got {enforcement!r}")
