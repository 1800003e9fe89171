"""RFC 4028 session timers, as a proxy applies them. Sans-I/O: messages in, decisions out.

A proxy has no session of its own; what it does (RFC 4028 §8) is:

- on a session refresh request (the initial INVITE, a re-INVITE, an UPDATE) make sure the
  interval is one it can live with (:func:`plan_request`, §8.1), and remember what it forwarded;
- on the 2xx learn the interval the two ends settled on, filling it in for a UAS that ignores
  the extension when the UAC can refresh (:func:`plan_response`, §8.2).

The node then ends, through the hooks, a call whose interval runs out with no refresh (§10):
that is what lets a lost BYE cost a license for one session interval instead of a day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meter.codecs.sip import Message, SIPError, parse_params

# RFC 4028 §5: no element may ask for a session interval under 90 s (the Min-SE floor).
MIN_SE_FLOOR = 90
# The methods whose 2xx refreshes a session (RFC 4028 §1: re-INVITE or UPDATE, RFC 3311).
REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})

_DELTA_RE = re.compile(r"[ \t]*([0-9]{1,10})")
_MAX_DELTA = 2**32 - 1  # RFC 3261 §25.1 delta-seconds, as the codec bounds Expires


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """A Session-Expires value (RFC 4028 §4): the interval and who refreshes ("uac", "uas" or "")."""

    interval: int
    refresher: str
    params: str
    """The parameters as written (``;refresher=uac``), kept so the node can change the number only."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What the node forwarded in a session refresh request, for §8.2 on its 2xx."""

    interval: int = 0
    """Session-Expires as forwarded; 0 = the request went without one."""
    uac_supports: bool = False
    """The request said ``Supported: timer`` (or Require): its sender can refresh."""


NO_OFFER = Offer()


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What to do with a session refresh request: answer 422, or forward with these header edits."""

    reject_min_se: int = 0
    """> 0: answer 422 Session Interval Too Small with this Min-SE (RFC 4028 §6)."""
    edits: tuple[tuple[str, str], ...] = ()
    """Headers to set on every forwarded copy."""
    offer: Offer = NO_OFFER


@dataclass(frozen=True, slots=True)
class Session:
    """The session interval a 2xx settled (0 = no session timer) and who refreshes."""

    interval: int = 0
    refresher: str = ""


NO_SESSION = Session()


def _delta(value: str, what: str) -> tuple[int, str]:
    m = _DELTA_RE.match(value)
    if m is None or int(m.group(1)) > _MAX_DELTA:
        raise SIPError(f"Bad Request - malformed {what}")
    return int(m.group(1)), value[m.end():]


def parse_session_expires(value: str) -> SessionExpires:
    """RFC 4028 §4: ``delta-seconds *(SEMI se-params)``, refresher-param = ``refresher=uac|uas``."""
    interval, rest = _delta(value, "Session-Expires")
    params = parse_params(rest, what="Session-Expires")
    refresher = (params.get("refresher") or "").lower()
    if refresher not in ("", "uac", "uas"):
        raise SIPError("Bad Request - malformed Session-Expires refresher")
    return SessionExpires(interval, refresher, rest.strip(" \t"))


def read_session_expires(msg: Message) -> SessionExpires | None:
    value = msg.header("session-expires")  # compact form "x" folds in (RFC 4028 §4)
    return None if value is None else parse_session_expires(value)


def read_min_se(msg: Message) -> int:
    """RFC 4028 §5: ``Min-SE: delta-seconds *(SEMI generic-param)``; 0 when absent."""
    value = msg.header("min-se")
    if value is None:
        return 0
    number, rest = _delta(value, "Min-SE")
    parse_params(rest, what="Min-SE")
    return number


def supports_timer(msg: Message) -> bool:
    """RFC 4028 §7.1: the sender can refresh when it lists "timer" in Supported (or requires it)."""
    return any(tag.lower() == "timer" for name in ("supported", "require") for tag in msg.header_values(name))


def plan_request(req: Message, *, min_se: int, insert: int) -> RequestPlan:
    """RFC 4028 §8.1 for one session refresh request. ``min_se`` is the shortest interval the node
    accepts, ``insert`` the interval it adds to a request without one (0 = add none).
    Raises :class:`SIPError` (400) on a malformed Session-Expires or Min-SE."""
    se = read_session_expires(req)
    floor = read_min_se(req)
    uac = supports_timer(req)
    if se is None:
        if not insert:
            return RequestPlan(offer=Offer(0, uac))
        # §8.1: a proxy MAY add Session-Expires, not below the request's Min-SE and without refresher.
        interval = max(insert, floor)
        return RequestPlan(edits=(("Session-Expires", str(interval)),), offer=Offer(interval, uac))
    if se.interval >= min_se:
        return RequestPlan(offer=Offer(se.interval, uac))  # §8.1: a proxy MUST NOT increase it
    if uac:
        return RequestPlan(reject_min_se=min_se)  # §8.1: the UAC understands 422 and retries
    # §8.1: a UAC without the extension would not understand 422: raise Min-SE and the interval
    # to the node's minimum instead, refresher parameter untouched.
    raised = max(min_se, floor)
    value = f"{raised};{se.params.lstrip(';')}" if se.params else str(raised)
    return RequestPlan(edits=(("Min-SE", str(raised)), ("Session-Expires", value)), offer=Offer(raised, uac))


def plan_response(resp: Message, offer: Offer) -> tuple[Session, tuple[tuple[str, str], ...]]:
    """RFC 4028 §8.2 for the 2xx of a session refresh request: the session it settles and the
    header edits the node makes before forwarding it. A malformed Session-Expires in a 2xx is
    read as none (the response is forwarded as it is, RFC 3261 §16.7)."""
    try:
        se = read_session_expires(resp)
    except SIPError:
        se = None
    if se is not None:
        return Session(se.interval, se.refresher), ()  # §8.2: the UAS settled it; not modified
    if offer.interval and offer.uac_supports:
        # §8.2: the UAS ignored the extension, the UAC supports it: the proxy puts the interval it
        # forwarded in the 2xx with refresher=uac, and Require: timer so the UAC refreshes.
        require = [t for t in resp.header_values("require") if t.lower() != "timer"] + ["timer"]
        edits = (("Session-Expires", f"{offer.interval};refresher=uac"), ("Require", ", ".join(require)))
        return Session(offer.interval, "uac"), edits
    return NO_SESSION, ()  # §8.2: neither end does session timers: no session expiration
