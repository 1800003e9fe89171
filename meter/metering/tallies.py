"""Running totals of the metering records, so a scrape does not walk them.

``/metrics`` (``meter_registrations``, ``meter_calls``) and ``/api/v1/licenses``
(``registrations_by_class``, ``calls_by_class``) show the records counted by label. Walking
50,000 registrations took 16 ms per scrape (BENCHMARKS.md, 2026-12-04); these totals move by one
at each record added, removed or re-classified, so a scrape costs the same at any size.

The labels counted:
- registrations by (protocol, device_class): one per charged alias (R9), device class from the
  license it took (R1, R2; "none" for registrations that take no license: MRA, R6, C1 zones);
- calls by (call class, license): a call counts under its media class, "setup" until set-up
  completes (C6), then its negotiated class (C4, C5), frozen from then on (C7), and the license
  it is charged to (C2 RMS, C10 CMR, "none" for registered calls, C1).

Only ``meter.metering.join.Metering`` changes them, in the same places it changes its tables.
"""

from __future__ import annotations


class RecordTallies:
    __slots__ = ("registrations", "calls")

    def __init__(self) -> None:
        self.registrations: dict[tuple[str, str], int] = {}  # (protocol, device_class) -> aliases
        self.calls: dict[tuple[str, str], int] = {}          # (media, license) -> calls

    def registration(self, record, sign: int) -> None:
        """``record`` (a RegistrationRecord) entered (+1) or left (-1) the registrations table."""
        _move(self.registrations, (record.protocol, record.device_class), sign)

    def call(self, record, sign: int) -> None:
        """``record`` (a CallRecord) entered (+1) or left (-1) the calls table, or, around a
        settle (C6), left its old class (-1) and entered its new one (+1)."""
        _move(self.calls, (str(record.media), str(record.charge.license)), sign)

    def clear(self) -> None:
        self.registrations.clear()
        self.calls.clear()


def _move(counts: dict, key, sign: int) -> None:
    value = counts.get(key, 0) + sign
    if value > 0:
        counts[key] = value
    else:  # a label with nothing left is gone: the totals equal a recount of the tables
        counts.pop(key, None)
