"""Pre-built SIP datagrams for the load generator, and the one thing it reads back.

Built once before the clock starts, so sending costs a ``sendto`` and nothing else. Each request
carries its sequence number in the Via branch (RFC 3261 §8.1.1.7 magic cookie + ``bm<seq>``); a
response copies that Via back (§8.2.6.2), so matching it to its request is one regex, no parsing.
"""

from __future__ import annotations

import re

from bench.devices import Device

#: The domain the benchmark endpoints register in. RFC 2606 reserves `.test`; the node gets it as
#: an alias, Kamailio's registrar ignores domains (use_domain=0).
DOMAIN = "bench.meter.test"
BRANCH_PREFIX = "z9hG4bKbm"
_BRANCH_RE = re.compile(rb"branch=z9hG4bKbm([0-9]+)")

_REGISTER = (
    "REGISTER sip:%(domain)s SIP/2.0\r\n"
    "Via: SIP/2.0/UDP %(via_host)s:%(via_port)d;rport;branch=" + BRANCH_PREFIX + "%(seq)d\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:%(user)s@%(domain)s>;tag=%(tag)s\r\n"
    "To: <sip:%(user)s@%(domain)s>\r\n"
    "Call-ID: %(tag)s-reg@%(via_host)s\r\n"
    "CSeq: %(cseq)d REGISTER\r\n"
    "Contact: <sip:%(user)s@%(contact)s>;expires=%(expires)d\r\n"
    "Expires: %(expires)d\r\n"
    "User-Agent: %(ua)s\r\n"
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"
    "Content-Length: 0\r\n\r\n"
)

_OPTIONS = (
    "OPTIONS sip:%(target)s SIP/2.0\r\n"
    "Via: SIP/2.0/UDP %(via_host)s:%(via_port)d;rport;branch=" + BRANCH_PREFIX + "%(seq)d\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:probe@%(domain)s>;tag=probe%(seq)d\r\n"
    "To: <sip:%(target)s>\r\n"
    "Call-ID: probe-%(seq)d@%(via_host)s\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


def user_name(index: int) -> str:
    """The alias of endpoint ``index``: one AOR per endpoint, as rule R9 counts them."""
    return f"bench{index:06d}"


def register(index: int, device: Device, *, seq: int, cseq: int, via: tuple[str, int],
             contact: str, expires: int = 3600, domain: str = DOMAIN) -> bytes:
    """A REGISTER for endpoint ``index``; ``contact`` is "host:port" where it takes calls."""
    return (_REGISTER % {
        "domain": domain, "via_host": via[0], "via_port": via[1], "seq": seq, "cseq": cseq,
        "user": user_name(index), "tag": f"{index:x}", "contact": contact, "expires": expires,
        "ua": device.user_agent,
    }).encode()


def options(seq: int, *, via: tuple[str, int], target: str, domain: str = DOMAIN) -> bytes:
    """An out-of-dialog OPTIONS: any answer to it means the peer is up."""
    return (_OPTIONS % {"seq": seq, "via_host": via[0], "via_port": via[1], "target": target,
                        "domain": domain}).encode()


def response_key(data: bytes) -> tuple[int, int] | None:
    """``(seq, status)`` of a response to one of our requests, or None for anything else."""
    if not data.startswith(b"SIP/2.0 "):
        return None
    m = _BRANCH_RE.search(data)
    if m is None:
        return None
    status = data[8:11]
    if not status.isdigit():
        return None
    return int(m[1]), int(status)
