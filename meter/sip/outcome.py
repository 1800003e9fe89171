"""What a forwarded request means beyond RFC 3261 §16, told how it ended.

The proxy core (``meter.sip.core``) forwards a request and collects its branches' answers; it
knows nothing of registrations or calls. Each purpose that needs to hear the result hands the core
one small :class:`Outcome` with the request: an inline REGISTER (``meter.sip.registrar``), a call
set-up, a BYE and a session refresh (``meter.sip.call_control``). One object per purpose instead
of one context with an optional field for each.
"""

from __future__ import annotations

from meter.codecs.sip import Response


class Outcome:
    """The default outcome: nothing beyond forwarding. Subclasses override what they need.

    The core calls, for one forwarded request: ``provisional`` for each 101-199 it relays,
    ``success`` for each 2xx (before it is relayed, so edits reach the caller), ``gave_up`` when a
    branch ended with no answer (timeout, unreachable), and ``failed`` once when the final answer
    it relays is a non-2xx (``cause``: "rejected <status>", "timeout", "unreachable" or "cancelled")."""

    __slots__ = ()

    def provisional(self, resp: Response) -> None:
        pass

    def success(self, resp: Response, branch_peer, branch_uri: str) -> None:
        pass

    def gave_up(self) -> None:
        pass

    def failed(self, status: int, cause: str) -> None:
        pass


NO_OUTCOME = Outcome()
