"""H.323: the RAS gatekeeper (standalone) and RAS forwarding to an upstream gatekeeper (inline).

- ``gatekeeper``     the standalone core, sans-I/O (``Gatekeeper``)
- ``inline``         the forwarding core, the same tables and hooks (``InlineGatekeeper``)
- ``registrations``  the registration table and alias identity (``alias_key``)
- ``calls``          the call table (``RasCall``, one row per callIdentifier)
- ``hooks``          the contract with the metering join (``RasHooks``)
- ``node``           the asyncio adapter: the UDP socket and the housekeeping timer (``RasNode``)
- ``settings``, ``counters``  the ``[h323]`` section; plain-int counters for the metrics

The cores are sans-I/O in aioquic's shape: ``now`` goes in with every call (``receive(data,
source, now)``, ``tick(now)``, ``close(now)``), and the datagrams to send come back as the return
value; the caller owns the clock, the socket and the one timer. RAS suits that shape: one datagram
in gives zero or more datagrams out, answered before the call returns, and its timers are few
and coarse (time-to-live expiry, IRQ polling and upstream timeouts, counted in seconds and all
checked on one housekeeping tick, ``housekeeping_interval``, 1 s by default), so the core needs
no timer of its own and no ``send`` callback. The SIP core (``meter.sip``) is built the other way,
with ``send`` and a ``Clock`` injected: its transaction timers are many and fine-grained (RFC 3261
§17: per-transaction retransmission and timeout timers from T1 = 500 ms up), and a retransmission
goes out long after the input that caused it.

``meter.h323`` never imports ``meter.sip``: what it needs from the SIP side (is this alias
registered over SIP here, and where do calls to it go: rule C9) comes in as the ``sip_locator``
function the composition (``meter.app``) builds.
"""
