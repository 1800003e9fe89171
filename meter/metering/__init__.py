"""The metering join: what passes the signalling cores is charged in real time.

- ``join``  the shared part: one :class:`~meter.metering.join.Metering` per node, holding the
            ledger, a record per charged alias and per call (what each costs and the rule IDs that
            decided it), and the one function that says which side of a zone is registered
            (``zone_registration``). Each protocol module words its refusals from the one table,
            ``meter.licensing.refusals``.
- ``sip``   the SIP node's hooks (``meter.sip.hooks``) -> the join.
- ``h323``  the RAS gatekeeper's hooks (``meter.h323.hooks``) -> the join.

The protocol modules import the join, never each other, and the join imports neither: the
composition (``meter.app``) builds one hook object per protocol around the one Metering.
"""
