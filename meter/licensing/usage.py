"""Usage accounting: current use, peaks taken at every charge, refusals, for this node and the cluster.

The ledger (``meter.licensing.ledger``) calls a ``UsageMeter`` from ``Ledger._shift`` on every
change of a pooled license's in-use value and of a call class's count, and where it counts a
refusal, so a peak is the exact highest value the ledger ever held, with its instant: a spike of
three calls lasting 200 ms between two ticks is a peak of three. Nothing is sampled.

- Per license type (rms, room, desktop, cmr): current, all-time peak, peak since the operator's
  last reset (``reset_peaks``), refused (enforce) and would-be refusals (observe). RMS is counted
  in the ledger's half units and shown in licenses: two audio-only SIP calls are 1 (C4).
- Per call class (video, audio_sip, audio_other; a call still setting up counts as video, C6):
  current and peak calls.
- The cluster: this node's value plus the other peers' last published values (the pool's
  ``usage_elsewhere``, handed in by the ledger at its tick through ``peers_published``). The
  cluster peak is the highest such sum at one instant, taken at each of this node's charges and
  at each tick. Error bound: a peer's value is the one it last published, so a spike on a peer
  shorter than its publish interval (``[cluster] sync_interval``, 1 s) plus this node's tick (1 s)
  can be missed by the cluster sum, and the sum can lag a peer's change by that long. The peer's
  own node never misses it: its own peak is taken at every charge.
- A window (``take_window``): max, min and refusals since the last take, for the per-minute
  history (``meter.store.usage_history``), written off the hot path from the node's tick.

Hot path: per change of a license's value, one comparison against the since-reset peak (never
above the all-time peak), one or two against the window's max and min, one for the cluster sum
(the window's cluster max is never above the cluster peak); per call, one. No clock: every
``now`` is passed in (the ledger's). Pure: no I/O here; ``state``/``restore`` give the store what
must survive a restart.
"""

from __future__ import annotations

from meter.licensing.model import POOLED, UNIT_SCALE, Media

CALL_CLASSES = ("video", "audio_sip", "audio_other")
# C6: a call is charged as video while it is set up.
_CLASS_OF: dict[str, str] = {
    Media.SETUP: "video", Media.VIDEO: "video", Media.AUDIO_SIP: "audio_sip", Media.AUDIO_OTHER: "audio_other",
}
_LICENSES = tuple(str(lic) for lic in POOLED)


class _Peak:
    """A running maximum with its instant."""

    __slots__ = ("value", "at")

    def __init__(self, value: int = 0, at: float | None = None) -> None:
        self.value, self.at = value, at


class _LicenseUsage:
    __slots__ = ("current", "peak", "since_reset", "elsewhere", "cluster_peak", "capacity",
                 "refused", "would_refuse", "win_max", "win_min", "win_cluster_max",
                 "win_refused", "win_would")

    def __init__(self) -> None:
        self.current = 0              # ledger units (RMS: half units)
        self.peak = _Peak()
        self.since_reset = _Peak()
        self.elsewhere = 0            # the other peers' last published units
        self.cluster_peak = _Peak()
        self.capacity = 0             # licenses in the cluster pool (P1)
        self.refused = 0
        self.would_refuse = 0
        self.win_max = self.win_min = self.win_cluster_max = 0
        self.win_refused = self.win_would = 0


class UsageMeter:
    def __init__(self, node: str, now: float = 0.0) -> None:
        self.node = node
        self._lic: dict[str, _LicenseUsage] = {lic: _LicenseUsage() for lic in _LICENSES}
        self._calls: dict[str, int] = {cls: 0 for cls in CALL_CLASSES}
        self._call_peaks: dict[str, _Peak] = {cls: _Peak() for cls in CALL_CLASSES}
        self.reset_at: float | None = None
        self.window_start = now
        # Moves whenever a peak moves (rarely): the node writes the peaks at its next tick.
        self.peak_changes = 0

    # ---- the ledger's hooks (hot path) -----------------------------------------------------

    def license_changed(self, license: str, units: int, now: float) -> None:
        """The ledger's in-use value of ``license`` is now ``units`` (its units: RMS in halves)."""
        u = self._lic[license]
        u.current = units
        if units > u.since_reset.value:  # the since-reset peak is never above the all-time one
            u.since_reset.value, u.since_reset.at = units, now
            self.peak_changes += 1
            if units > u.peak.value:
                u.peak.value, u.peak.at = units, now
        if units > u.win_max:
            u.win_max = units
        elif units < u.win_min:
            u.win_min = units
        cluster = units + u.elsewhere
        if cluster > u.win_cluster_max:  # the window's cluster max is never above the cluster peak
            u.win_cluster_max = cluster
            if cluster > u.cluster_peak.value:
                u.cluster_peak.value, u.cluster_peak.at = cluster, now
                self.peak_changes += 1

    def call_changed(self, media: str, sign: int, now: float) -> None:
        """One call of class ``media`` began (+1) or ended (-1); settling is an end and a begin."""
        cls = _CLASS_OF[media]
        count = self._calls[cls] + sign
        if count < 0:
            count = 0
        self._calls[cls] = count
        peak = self._call_peaks[cls]
        if count > peak.value:
            peak.value, peak.at = count, now
            self.peak_changes += 1

    def refusal(self, license: str, observed: bool) -> None:
        """A charge of ``license`` did not fit: refused (enforce) or let through (observe)."""
        u = self._lic.get(license)
        if u is None:  # license "none": refused by a node limit, no pool to size
            return
        if observed:
            u.would_refuse += 1
            u.win_would += 1
        else:
            u.refused += 1
            u.win_refused += 1
        self.peak_changes += 1  # the counts are saved with the peaks

    # ---- the ledger's tick -----------------------------------------------------------------

    def peers_published(self, license: str, elsewhere_units: int, capacity: int, now: float) -> None:
        """The other peers' last published usage of ``license`` and the pool's capacity (P1)."""
        u = self._lic[license]
        u.elsewhere, u.capacity = elsewhere_units, capacity
        cluster = u.current + elsewhere_units
        if cluster > u.cluster_peak.value:
            u.cluster_peak.value, u.cluster_peak.at = cluster, now
            self.peak_changes += 1
        if cluster > u.win_cluster_max:
            u.win_cluster_max = cluster

    # ---- the operator and the views --------------------------------------------------------

    def reset_peaks(self, now: float) -> None:
        """The operator's reset: the since-reset peaks start again from the current values."""
        self.reset_at = now
        self.peak_changes += 1
        for u in self._lic.values():
            u.since_reset.value, u.since_reset.at = u.current, now

    def current(self, license: str) -> float:
        """In-use licenses of ``license`` on this node (RMS in licenses)."""
        return self._lic[license].current / UNIT_SCALE[license]

    def view(self, now: float) -> dict:
        """The JSON shape of /api/v1/usage (contracts A): licenses in licenses, RMS 0.5 per audio-only SIP call."""
        licenses = {}
        for lic, u in self._lic.items():
            scale = UNIT_SCALE[lic]
            licenses[lic] = {
                "current": u.current / scale,
                "peak": u.peak.value / scale, "peak_at": u.peak.at,
                "peak_since_reset": u.since_reset.value / scale, "peak_since_reset_at": u.since_reset.at,
                "reset_at": self.reset_at,
                "would_refuse": u.would_refuse, "refused": u.refused,
                "capacity": u.capacity,
                "cluster_current": (u.current + u.elsewhere) / scale,
                "cluster_peak": u.cluster_peak.value / scale, "cluster_peak_at": u.cluster_peak.at,
            }
        calls = {cls: {"current": self._calls[cls], "peak": p.value, "peak_at": p.at}
                 for cls, p in self._call_peaks.items()}
        return {"at": now, "node": self.node, "licenses": licenses, "calls_by_class": calls}

    # ---- the per-minute history -------------------------------------------------------------

    def take_window(self, now: float) -> dict[str, dict]:
        """Max, min, cluster max (licenses) and refusals of each license since the last take; starts
        the next window from the current values. ``start`` is when the taken window began."""
        out = {}
        for lic, u in self._lic.items():
            scale = UNIT_SCALE[lic]
            out[lic] = {"start": self.window_start, "max": u.win_max / scale, "min": u.win_min / scale,
                        "cluster_max": u.win_cluster_max / scale, "capacity": u.capacity,
                        "refusals": u.win_refused, "would_refuse": u.win_would}
            u.win_max = u.win_min = u.current
            u.win_cluster_max = u.current + u.elsewhere
            u.win_refused = u.win_would = 0
        self.window_start = now
        return out

    # ---- what survives a restart -------------------------------------------------------------

    def state(self) -> dict:
        """Peaks (with instants), the reset and the refusal counts, in the ledger's units."""
        return {
            "reset_at": self.reset_at,
            "licenses": {lic: {"peak": [u.peak.value, u.peak.at],
                               "since_reset": [u.since_reset.value, u.since_reset.at],
                               "cluster_peak": [u.cluster_peak.value, u.cluster_peak.at],
                               "refused": u.refused, "would_refuse": u.would_refuse}
                         for lic, u in self._lic.items()},
            "calls": {cls: [p.value, p.at] for cls, p in self._call_peaks.items()},
        }

    def restore(self, state: dict) -> None:
        """Bring back ``state()`` of a previous run (a higher peak of this run is kept)."""
        self.reset_at = state.get("reset_at", self.reset_at)
        for lic, saved in state.get("licenses", {}).items():
            u = self._lic.get(lic)
            if u is None:
                continue
            for name in ("peak", "since_reset", "cluster_peak"):
                value, at = saved.get(name, (0, None))
                peak: _Peak = getattr(u, name)
                if value > peak.value:
                    peak.value, peak.at = int(value), at
            u.refused += int(saved.get("refused", 0))
            u.would_refuse += int(saved.get("would_refuse", 0))
        for cls, (value, at) in state.get("calls", {}).items():
            peak = self._call_peaks.get(cls)
            if peak is not None and value > peak.value:
                peak.value, peak.at = int(value), at
