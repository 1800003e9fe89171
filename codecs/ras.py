"""H.225.0 RAS messages (ITU-T H.225.0, ASN.1 module H323-MESSAGES, type RasMessage), sans-I/O, on pycrate.

Bytes in, a small frozen :class:`RasMessage` out (:func:`decode`); keyword arguments in, aligned-PER
bytes out (one ``encode`` function per message kind the node or its test endpoints send, plus
:func:`encode_raw` for anything else). No sockets, no clocks, no randomness: GUIDs and sequence
numbers come from the caller.

pycrate
-------
pycrate 0.8.1's ``pycrate_asn1dir.H225`` holds the whole H.225.0 v7 (12/2009) ASN.1 (H323-MESSAGES,
H235-SECURITY-MESSAGES and MULTIMEDIA-SYSTEM-CONTROL): a 1.2 MB generated module. Measured here
(2 shared cores): 0.06-0.09 s and +9 MiB RSS with its .pyc cached; 0.45-0.5 s and +56 MiB RSS peak
when it must be compiled first; ~4.4 s under tracemalloc. Encoding ~5,300 RRQ/s and ~8,500 ARQ/s,
decoding ~6,000 RRQ/s and ~9,600 ARQ/s (one core, CPython 3.11).
It is imported once, on first use (:func:`load` to do it at start-up instead), together with the
aligned-PER encoder fix in :mod:`meter.codecs.ras_per_fix` (a spurious ``00`` octet before the first
extension addition of SEQUENCEs whose root part ends mid-octet: GRQ, ARQ, DRQ, ACF...).

What pycrate does not do for us, and this module does:

* **Mandatory extension additions** (components after ``...`` without ``OPTIONAL``) are not
  enforced by pycrate; :data:`MANDATORY_ADDITIONS` fills them for every message we encode
  (RRQ keepAlive/willSupplyUUIEs/maintainConnection/supportsAssignedGK, ARQ canMapAlias/
  callIdentifier/willSupplyUUIEs/canMapSrcAlias, ...), from the H323-MESSAGES ASN.1.
* **One error type.** Decoding garbage makes pycrate raise many exception types (its own,
  CharpyErr, IndexError, KeyError, even NameError and AssertionError); :func:`decode` and every
  encoder turn all of them into :class:`RASError`. pycrate's ``from_aper`` does not pop its offset
  stack when it raises; the boundary truncates it, so a flood of garbage does not grow it.
* **Vendor strings**: real endpoints pad productId/versionId with NULs; they are stripped.

Threading: pycrate keeps codec state in class attributes (``ASN1CodecPER.ALIGNED``/``_off``, every
ASN.1 object's ``_val``). Use this module from the event-loop thread only, never from executors.
"""

from __future__ import annotations

import ipaddress
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Union

__all__ = [
    "RASError", "RasMessage", "Alias", "TransportAddress", "Vendor", "CallInfo",
    "load", "is_loaded", "decode", "decode_raw", "encode_raw",
    "SHORT_NAMES", "KINDS", "MANDATORY_ADDITIONS", "PROTOCOL_IDENTIFIER", "MAX_MESSAGE_BYTES",
    "ZERO_GUID", "guid_str", "reject_reasons",
    "gatekeeper_request", "gatekeeper_confirm", "gatekeeper_reject",
    "registration_request", "keep_alive_request", "registration_confirm", "registration_reject",
    "unregistration_request", "unregistration_confirm", "unregistration_reject",
    "admission_request", "admission_confirm", "admission_reject",
    "bandwidth_request", "bandwidth_confirm", "bandwidth_reject",
    "disengage_request", "disengage_confirm", "disengage_reject",
    "location_request", "location_confirm", "location_reject",
    "info_request", "info_request_response", "request_in_progress", "unknown_message_response",
]

#: H323-MESSAGES ProtocolIdentifier ``{itu-t(0) recommendation(0) h(8) 2250 version(0) 7}``: the version of the
#: ASN.1 pycrate compiled (H.225.0 12/2009), so every addition we fill exists in that version.
PROTOCOL_IDENTIFIER = (0, 0, 8, 2250, 0, 7)

#: 65507 octets: the largest UDP payload IPv4 can carry (65535 - 20 IP - 8 UDP). RAS is one message
#: per UDP datagram; anything longer did not come off the wire and is not handed to pycrate.
MAX_MESSAGE_BYTES = 65507

#: All-zero GUID: what an IRQ about all calls carries (with callReferenceValue 0), and the filler
#: for a mandatory CallIdentifier a caller of :func:`encode_raw` left out.
ZERO_GUID = bytes(16)

#: RasMessage CHOICE alternative -> the abbreviation H.225.0 uses in its text and tables.
SHORT_NAMES: dict[str, str] = {
    "gatekeeperRequest": "GRQ", "gatekeeperConfirm": "GCF", "gatekeeperReject": "GRJ",
    "registrationRequest": "RRQ", "registrationConfirm": "RCF", "registrationReject": "RRJ",
    "unregistrationRequest": "URQ", "unregistrationConfirm": "UCF", "unregistrationReject": "URJ",
    "admissionRequest": "ARQ", "admissionConfirm": "ACF", "admissionReject": "ARJ",
    "bandwidthRequest": "BRQ", "bandwidthConfirm": "BCF", "bandwidthReject": "BRJ",
    "disengageRequest": "DRQ", "disengageConfirm": "DCF", "disengageReject": "DRJ",
    "locationRequest": "LRQ", "locationConfirm": "LCF", "locationReject": "LRJ",
    "infoRequest": "IRQ", "infoRequestResponse": "IRR", "nonStandardMessage": "NSM",
    "unknownMessageResponse": "XRS", "requestInProgress": "RIP",
    "resourcesAvailableIndicate": "RAI", "resourcesAvailableConfirm": "RAC",
    "infoRequestAck": "IACK", "infoRequestNak": "INAK",
    "serviceControlIndication": "SCI", "serviceControlResponse": "SCR",
    "admissionConfirmSequence": "ACFSEQ",
}
#: Abbreviation -> CHOICE alternative.
KINDS: dict[str, str] = {short: kind for kind, short in SHORT_NAMES.items()}

_UUIES_NONE = {
    "setup": False, "callProceeding": False, "connect": False, "alerting": False,
    "information": False, "releaseComplete": False, "facility": False, "progress": False,
    "empty": False, "status": False, "statusInquiry": False, "setupAcknowledge": False,
    "notify": False,
}

#: Extension additions that H323-MESSAGES declares without OPTIONAL (so a sender that knows them
#: must send them) and pycrate does not enforce, with the value we send unless told otherwise.
#: Only keys absent from the value handed to :func:`encode_raw` are filled.
MANDATORY_ADDITIONS: dict[str, dict[str, Any]] = {
    "gatekeeperRequest": {"supportsAssignedGK": False},
    "registrationRequest": {
        "keepAlive": False, "willSupplyUUIEs": False, "maintainConnection": False,
        "supportsAssignedGK": False,
    },
    "registrationConfirm": {"willRespondToIRR": False, "maintainConnection": False},
    "admissionRequest": {
        "canMapAlias": False, "callIdentifier": {"guid": ZERO_GUID}, "willSupplyUUIEs": False,
        "canMapSrcAlias": False,
    },
    # UUIEsRequested's own additions (status, statusInquiry, setupAcknowledge, notify) are mandatory too.
    "admissionConfirm": {"willRespondToIRR": False, "uuiesRequested": _UUIES_NONE},
    "bandwidthRequest": {"callIdentifier": {"guid": ZERO_GUID}, "answeredCall": False},
    "disengageRequest": {"callIdentifier": {"guid": ZERO_GUID}, "answeredCall": False},
    "locationRequest": {"canMapAlias": False, "canMapSrcAlias": False},
    "infoRequest": {"callIdentifier": {"guid": ZERO_GUID}},
    "infoRequestResponse": {"needResponse": False, "unsolicited": False},
    "unknownMessageResponse": {"messageNotUnderstood": b""},
}
# IRR perCallInfo entries: callIdentifier and substituteConfIDs are mandatory additions there.


class RASError(ValueError):
    """A RAS message that cannot be decoded, or values that cannot be encoded.

    ``reason`` says what is wrong, for logs; ``code`` is a short fixed label, fit for a metric label
    and for deciding what to do: ``"empty"``, ``"too_large"``, ``"undecodable"``,
    ``"trailing_octets"``, ``"unknown_message"`` (a RasMessage alternative added after H.225.0 v7,
    whose sequence number cannot be known) (decoding: the node drops and counts, DESIGN principle 5),
    ``"invalid_value"`` (encoding: a programming or configuration error).
    """

    def __init__(self, reason: str, *, code: str = "undecodable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TransportAddress(NamedTuple):
    """An ``ipAddress``/``ip6Address`` TransportAddress (``ip`` as text)."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


class Alias(NamedTuple):
    """An AliasAddress as (type, value): type is the ASN.1 alternative name.

    Types: ``h323-ID``, ``dialledDigits`` (E.164 digits ``0-9#*,``), ``url-ID``, ``email-ID``,
    ``transportID`` (value ``ip:port``), ``partyNumber`` (value: the digits), and, decoded only,
    ``mobileUIM`` / ``isupNumber`` (value: the first number found) and ``_ext_<n>`` (unknown
    alternative of a newer H.225.0, value: its octets in hex).
    """

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class Vendor:
    """VendorIdentifier: H.221 (T.35) codes plus productId/versionId.

    Decoding strips the NUL (and blank) padding real endpoints add; encoding sends the strings as
    given, NULs included, so a test endpoint can pad like a real one.
    """

    country_code: int = 181        # T.35 country code (181 = United States, the usual one)
    extension: int = 0
    manufacturer_code: int = 0
    product_id: str | None = None
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class CallInfo:
    """One IRR ``perCallInfo`` entry (H323-MESSAGES InfoRequestResponse.perCallInfo)."""

    call_identifier: bytes
    conference_id: bytes
    call_reference_value: int = 0
    bandwidth: int = 0
    originator: bool | None = None
    call_type: str = "pointToPoint"
    call_model: str = "direct"


@dataclass(frozen=True, slots=True)
class RasMessage:
    """A decoded RAS message: the fields a gatekeeper and a license meter act on.

    Absent fields are ``None`` or ``()``. Identifiers (GUIDs) are the 16 raw octets; see
    :func:`guid_str`. Bandwidths are in units of 100 bit/s, as on the wire (H.225.0 BandWidth).
    """

    kind: str                                  # CHOICE alternative, e.g. "registrationRequest"
    short: str                                 # e.g. "RRQ"
    request_seq_num: int
    protocol_identifier: tuple[int, ...] | None = None
    aliases: tuple[Alias, ...] = ()            # terminalAlias / endpointAlias / srcInfo / sourceInfo
    destination: tuple[Alias, ...] = ()        # destinationInfo (ARQ, ACF, LRQ, LCF)
    dest_extra_call_info: tuple[Alias, ...] = ()
    endpoint_identifier: str | None = None
    gatekeeper_identifier: str | None = None
    vendor: Vendor | None = None               # endpointVendor, else endpointType/terminalType vendor
    endpoint_type: str | None = None           # "terminal" | "gateway" | "mcu" | "gatekeeper" | "undefined"
    destination_type: str | None = None        # ACF/LCF destinationType, same values
    ras_addresses: tuple[TransportAddress, ...] = ()
    call_signal_addresses: tuple[TransportAddress, ...] = ()
    dest_call_signal_address: TransportAddress | None = None
    src_call_signal_address: TransportAddress | None = None
    reply_address: TransportAddress | None = None
    discovery_complete: bool | None = None
    keep_alive: bool | None = None
    time_to_live: int | None = None            # seconds
    additive_registration: bool = False
    call_identifier: bytes | None = None       # CallIdentifier.guid
    conference_id: bytes | None = None
    call_reference_value: int | None = None
    call_type: str | None = None
    call_model: str | None = None              # "direct" | "gatekeeperRouted"
    answer_call: bool | None = None            # ARQ answerCall, BRQ/DRQ answeredCall
    bandwidth: int | None = None               # bandWidth, or BRJ allowedBandWidth
    can_map_alias: bool | None = None
    irr_frequency: int | None = None
    will_respond_to_irr: bool | None = None
    need_response: bool | None = None
    unsolicited: bool | None = None
    reject_reason: str | None = None           # rejectReason / nakReason alternative
    duplicate_aliases: tuple[Alias, ...] = ()  # RRJ duplicateAlias
    reason: str | None = None                  # URQ reason, DRQ disengageReason
    calls: tuple[CallInfo, ...] = ()           # IRR perCallInfo
    delay: int | None = None                   # RIP delay, milliseconds
    message_not_understood: bytes | None = None  # XRS

    @property
    def call_id_hex(self) -> str | None:
        return None if self.call_identifier is None else self.call_identifier.hex()


def guid_str(guid: bytes) -> str:
    """A GUID as Wireshark and most logs print it (the 16 octets in order, 8-4-4-4-12)."""
    return str(uuid.UUID(bytes=bytes(guid)))


# ----------------------------------------------------------------------------- pycrate, loaded once

_RAS: Any = None        # H323-MESSAGES.RasMessage
_PER: Any = None        # pycrate_asn1rt.codecs.ASN1CodecPER (holds the aligned-PER offset stack)
_Charpy: Any = None


def load() -> None:
    """Import pycrate's H.225 module and apply the PER fix, if not done yet (idempotent).

    Called by every codec function; call it at start-up to keep the one-off cost off the first packet.
    """
    global _RAS, _PER, _Charpy
    if _RAS is not None:
        return
    from pycrate_asn1dir import H225
    from pycrate_asn1rt.codecs import ASN1CodecPER
    from pycrate_core.charpy import Charpy

    from . import ras_per_fix

    ras_per_fix.apply()
    _PER, _Charpy = ASN1CodecPER, Charpy
    _RAS = H225.H323_MESSAGES.RasMessage


def is_loaded() -> bool:
    return _RAS is not None


@contextmanager
def _codec_boundary(what: str, code: str) -> Iterator[None]:
    """Turn whatever pycrate raises into RASError, and leave its offset stack as we found it."""
    depth = len(_PER._off)
    try:
        yield
    except RASError:
        raise
    except Exception as exc:  # pycrate raises many types, even NameError: all are "bad input" here
        raise RASError(f"{what}: {type(exc).__name__}: {exc}", code=code) from exc
    finally:
        del _PER._off[depth:]


# ----------------------------------------------------------------------------- decoding

def decode_raw(data: bytes) -> tuple[str, Any]:
    """Decode to pycrate's value: ``(kind, dict)``. For what :class:`RasMessage` does not carry."""
    load()
    data = bytes(data)
    if not data:
        raise RASError("empty datagram", code="empty")
    if len(data) > MAX_MESSAGE_BYTES:
        raise RASError(f"{len(data)} octets, more than a UDP datagram carries", code="too_large")
    char = _Charpy(data)
    with _codec_boundary("undecodable RAS message", "undecodable"):
        _RAS.from_aper(char)
        kind, value = _RAS._val
    if char.len_bit():
        raise RASError(f"{char.len_bit() // 8} octets after the {kind}", code="trailing_octets")
    if kind not in SHORT_NAMES:  # "_ext_<n>": an alternative a later H.225.0 added, content unknown
        raise RASError(f"RasMessage alternative {kind[5:]} is unknown to H.225.0 v7", code="unknown_message")
    return kind, value


def decode(data: bytes) -> RasMessage:
    """Decode one RAS datagram. Raises :class:`RASError` (only) when it is not a valid message."""
    kind, value = decode_raw(data)
    with _codec_boundary(f"unusable {kind}", "undecodable"):
        if isinstance(value, list):  # admissionConfirmSequence: SEQUENCE OF AdmissionConfirm
            value = value[0] if value else {}
        fields: dict[str, Any] = {}
        for name, component in value.items():
            reader = _READERS.get(name)
            if reader is not None:
                reader(fields, component)
        fields.setdefault("request_seq_num", 0)
        return RasMessage(kind=kind, short=SHORT_NAMES.get(kind, kind), **fields)


def _text(octets: bytes) -> str:
    # Real endpoints pad productId/versionId with NULs (and a few with spaces): not part of the name.
    return octets.strip(b"\x00").strip().decode("utf-8", "replace")


def _transport(value: tuple[str, Any]) -> TransportAddress | None:
    kind, v = value
    if kind in ("ipAddress", "ipSourceRoute"):
        return TransportAddress(str(ipaddress.IPv4Address(v["ip"])), v["port"])
    if kind == "ip6Address":
        return TransportAddress(str(ipaddress.IPv6Address(v["ip"])), v["port"])
    return None  # ipx, netBios, nsap, nonStandard: no IP endpoint to talk to


def _transports(value: Any) -> tuple[TransportAddress, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(t for t in map(_transport, items) if t is not None)


def _party_digits(value: tuple[str, Any]) -> str:
    kind, v = value
    if isinstance(v, str):
        return v
    for key in ("publicNumberDigits", "privateNumberDigits", "address"):
        if key in v:
            return v[key]
    return ""


def _alias(value: tuple[str, Any]) -> Alias:
    kind, v = value
    if isinstance(v, str):  # dialledDigits, h323-ID, url-ID, email-ID
        return Alias(kind, v)
    if kind == "transportID":
        t = _transport(v)
        return Alias(kind, str(t) if t else v[0])
    if kind in ("partyNumber", "isupNumber"):
        return Alias(kind, _party_digits(v))
    if kind == "mobileUIM":
        uim = v[1]
        for key in ("msisdn", "mdn", "imsi", "min"):
            if key in uim:
                return Alias(kind, uim[key])
        return Alias(kind, "")
    if isinstance(v, (bytes, bytearray)):  # unknown extension alternative, kept as open-type octets
        return Alias(kind, bytes(v).hex())
    return Alias(kind, repr(v))


def _aliases(value: list) -> tuple[Alias, ...]:
    return tuple(_alias(a) for a in value)


def _vendor(v: dict) -> Vendor:
    h221 = v["vendor"]
    return Vendor(
        h221["t35CountryCode"], h221["t35Extension"], h221["manufacturerCode"],
        _text(v["productId"]) if "productId" in v else None,
        _text(v["versionId"]) if "versionId" in v else None,
    )


_ENDPOINT_KINDS = ("mcu", "gateway", "gatekeeper", "terminal")  # most specific first


def _endpoint_type_name(v: dict) -> str:
    for kind in _ENDPOINT_KINDS:
        if kind in v:
            return kind
    return "undefined"


def _call_info(v: dict) -> CallInfo:
    return CallInfo(
        call_identifier=v.get("callIdentifier", {}).get("guid", ZERO_GUID),
        conference_id=v["conferenceID"],
        call_reference_value=v["callReferenceValue"],
        bandwidth=v["bandWidth"],
        originator=v.get("originator"),
        call_type=v["callType"][0],
        call_model=v["callModel"][0],
    )


def _set(field: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[dict, Any], None]:
    def reader(fields: dict, v: Any) -> None:
        fields[field] = convert(v)
    return reader


def _read_endpoint_type(fields: dict, v: dict) -> None:
    fields["endpoint_type"] = _endpoint_type_name(v)
    if "vendor" in v:
        fields.setdefault("vendor", _vendor(v["vendor"]))


def _read_vendor(fields: dict, v: dict) -> None:
    fields["vendor"] = _vendor(v)  # endpointVendor wins over terminalType.vendor


def _read_reject_reason(fields: dict, v: tuple[str, Any]) -> None:
    fields["reject_reason"] = v[0]
    if v[0] == "duplicateAlias":  # RRJ: the aliases another endpoint already holds
        fields["duplicate_aliases"] = _aliases(v[1])


def _choice_name(v: tuple[str, Any]) -> str:
    return v[0]


#: ASN.1 component name (any RAS message) -> how it lands in RasMessage's fields.
_READERS: dict[str, Callable[[dict, Any], None]] = {
    "requestSeqNum": _set("request_seq_num"),
    "protocolIdentifier": _set("protocol_identifier", tuple),
    "terminalAlias": _set("aliases", _aliases),
    "endpointAlias": _set("aliases", _aliases),
    "srcInfo": _set("aliases", _aliases),
    "sourceInfo": _set("aliases", _aliases),
    "destinationInfo": _set("destination", _aliases),
    "destExtraCallInfo": _set("dest_extra_call_info", _aliases),
    "endpointIdentifier": _set("endpoint_identifier"),
    "gatekeeperIdentifier": _set("gatekeeper_identifier"),
    "endpointVendor": _read_vendor,
    "terminalType": _read_endpoint_type,
    "endpointType": _read_endpoint_type,
    "destinationType": _set("destination_type", _endpoint_type_name),
    "rasAddress": _set("ras_addresses", _transports),
    "callSignalAddress": _set("call_signal_addresses", _transports),
    "destCallSignalAddress": _set("dest_call_signal_address", _transport),
    "srcCallSignalAddress": _set("src_call_signal_address", _transport),
    "replyAddress": _set("reply_address", _transport),
    "discoveryComplete": _set("discovery_complete"),
    "keepAlive": _set("keep_alive"),
    "timeToLive": _set("time_to_live"),
    "additiveRegistration": _set("additive_registration", lambda _: True),
    "callIdentifier": _set("call_identifier", lambda v: v["guid"]),
    "conferenceID": _set("conference_id"),
    "callReferenceValue": _set("call_reference_value"),
    "callType": _set("call_type", _choice_name),
    "callModel": _set("call_model", _choice_name),
    "answerCall": _set("answer_call"),
    "answeredCall": _set("answer_call"),
    "bandWidth": _set("bandwidth"),
    "allowedBandWidth": _set("bandwidth"),
    "canMapAlias": _set("can_map_alias"),
    "irrFrequency": _set("irr_frequency"),
    "willRespondToIRR": _set("will_respond_to_irr"),
    "needResponse": _set("need_response"),
    "unsolicited": _set("unsolicited"),
    "rejectReason": _read_reject_reason,
    "nakReason": _read_reject_reason,
    "reason": _set("reason", _choice_name),
    "disengageReason": _set("reason", _choice_name),
    "perCallInfo": _set("calls", lambda v: tuple(_call_info(c) for c in v)),
    "delay": _set("delay"),
    "messageNotUnderstood": _set("message_not_understood"),
}


# ----------------------------------------------------------------------------- encoding

AliasLike = Union[Alias, tuple[str, str]]
AddressLike = Union[TransportAddress, tuple[str, int]]


def encode_raw(kind: str, value: dict) -> bytes:
    """Encode pycrate's value of one RasMessage alternative, mandatory additions filled in.

    Raises :class:`RASError` (code ``invalid_value``) for anything pycrate refuses.
    """
    load()
    if kind not in SHORT_NAMES:
        raise RASError(f"unknown RAS message kind {kind!r}", code="invalid_value")
    # Copies: pycrate may edit the values it is handed, the table must stay as written.
    full = {k: dict(v) if isinstance(v, dict) else v for k, v in MANDATORY_ADDITIONS.get(kind, {}).items()}
    full.update(value)
    with _codec_boundary(f"cannot encode {kind}", "invalid_value"):
        return _RAS.to_aper((kind, full))


def reject_reasons(kind: str) -> frozenset[str]:
    """The reason names :func:`encode_raw`-based encoders accept for ``kind`` (NULL alternatives)."""
    load()
    field = "nakReason" if kind == "infoRequestNak" else "rejectReason"
    if kind not in SHORT_NAMES or field not in _RAS._cont[kind]._cont:
        raise RASError(f"{kind!r} has no {field}", code="invalid_value")
    choice = _RAS._cont[kind]._cont[field]
    return frozenset(name for name, obj in choice._cont.items() if obj.TYPE == "NULL")


def _null_choice(kind: str, field: str, name: str) -> tuple[str, int]:
    load()
    choice = _RAS._cont[kind]._cont[field]
    obj = choice._cont[name] if name in choice._cont else None  # ASN1Dict: no .get()
    if obj is None or obj.TYPE != "NULL":
        known = sorted(n for n, o in choice._cont.items() if o.TYPE == "NULL")
        raise RASError(f"{kind}.{field}: {name!r} is not one of {known}", code="invalid_value")
    return (name, 0)


def _enc_transport(addr: AddressLike) -> tuple[str, dict]:
    ip, port = addr
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError as exc:
        raise RASError(f"not an IP address: {ip!r}", code="invalid_value") from exc
    kind = "ipAddress" if parsed.version == 4 else "ip6Address"
    return (kind, {"ip": parsed.packed, "port": int(port)})


def _split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise RASError(f"transportID alias must be ip:port, not {text!r}", code="invalid_value")
    return host.strip("[]"), int(port)


def _enc_alias(alias: AliasLike) -> tuple[str, Any]:
    kind, value = alias
    if kind in ("h323-ID", "dialledDigits", "url-ID", "email-ID"):
        return (kind, value)
    if kind == "transportID":
        return (kind, _enc_transport(_split_host_port(value)))
    if kind == "partyNumber":  # an E.164 number of unknown type (H.225.0 PublicPartyNumber)
        return (kind, ("e164Number", {"publicTypeOfNumber": ("unknown", 0), "publicNumberDigits": value}))
    raise RASError(f"cannot encode alias type {kind!r}", code="invalid_value")


def _enc_aliases(aliases: Iterable[AliasLike]) -> list:
    return [_enc_alias(a) for a in aliases]


def _enc_vendor(v: Vendor) -> dict:
    out: dict[str, Any] = {"vendor": {
        "t35CountryCode": v.country_code, "t35Extension": v.extension,
        "manufacturerCode": v.manufacturer_code,
    }}
    if v.product_id:
        out["productId"] = v.product_id.encode()
    if v.version_id:
        out["versionId"] = v.version_id.encode()
    return out


def _enc_endpoint_type(kind: str, vendor: Vendor | None = None) -> dict:
    if kind not in _ENDPOINT_KINDS and kind != "undefined":
        raise RASError(f"endpoint type {kind!r} is not one of {_ENDPOINT_KINDS + ('undefined',)}",
                       code="invalid_value")
    # H.225.0 EndpointType: an MCU must set mc as well; undefinedNode marks "none of these".
    out: dict[str, Any] = {"mc": kind == "mcu", "undefinedNode": kind == "undefined"}
    if kind != "undefined":
        out[kind] = {}
    if vendor is not None:
        out["vendor"] = _enc_vendor(vendor)
    return out


def _guid(value: bytes, what: str) -> bytes:
    value = bytes(value)
    if len(value) != 16:
        raise RASError(f"{what} must be 16 octets, got {len(value)}", code="invalid_value")
    return value


def _optional(out: dict, **fields: Any) -> dict:
    """Add the fields whose value is not None (OPTIONAL components left out otherwise)."""
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def _opt_aliases(aliases: Iterable[AliasLike]) -> list | None:
    encoded = _enc_aliases(aliases)
    return encoded or None


# --- GRQ / GCF / GRJ: gatekeeper discovery

def gatekeeper_request(seq: int, *, ras_address: AddressLike, aliases: Iterable[AliasLike] = (),
                       endpoint_type: str = "terminal", vendor: Vendor | None = None,
                       gatekeeper_id: str | None = None,
                       protocol_identifier: tuple[int, ...] = PROTOCOL_IDENTIFIER) -> bytes:
    return encode_raw("gatekeeperRequest", _optional(
        {"requestSeqNum": seq, "protocolIdentifier": protocol_identifier,
         "rasAddress": _enc_transport(ras_address),
         "endpointType": _enc_endpoint_type(endpoint_type, vendor)},
        gatekeeperIdentifier=gatekeeper_id, endpointAlias=_opt_aliases(aliases)))


def gatekeeper_confirm(seq: int, *, ras_address: AddressLike, gatekeeper_id: str | None = None,
                       protocol_identifier: tuple[int, ...] = PROTOCOL_IDENTIFIER) -> bytes:
    return encode_raw("gatekeeperConfirm", _optional(
        {"requestSeqNum": seq, "protocolIdentifier": protocol_identifier,
         "rasAddress": _enc_transport(ras_address)},
        gatekeeperIdentifier=gatekeeper_id))


def gatekeeper_reject(seq: int, reason: str = "resourceUnavailable", *,
                      gatekeeper_id: str | None = None,
                      protocol_identifier: tuple[int, ...] = PROTOCOL_IDENTIFIER) -> bytes:
    return encode_raw("gatekeeperReject", _optional(
        {"requestSeqNum": seq, "protocolIdentifier": protocol_identifier,
         "rejectReason": _null_choice("gatekeeperReject", "rejectReason", reason)},
        gatekeeperIdentifier=gatekeeper_id))


# --- RRQ / RCF / RRJ: registration

def registration_request(seq: int, *, call_signal_addresses: Iterable[AddressLike],
                         ras_addresses: Iterable[AddressLike], aliases: Iterable[AliasLike] = (),
                         vendor: Vendor = Vendor(), endpoint_type: str = "terminal",
                         gatekeeper_id: str | None = None, endpoint_id: str | None = None,
                         time_to_live: int | None = None, keep_alive: bool = False,
                         discovery_complete: bool = False, additive: bool = False,
                         protocol_identifier: tuple[int, ...] = PROTOCOL_IDENTIFIER) -> bytes:
    """A full RRQ; with ``keep_alive=True`` see :func:`keep_alive_request`."""
    return encode_raw("registrationRequest", _optional(
        {"requestSeqNum": seq, "protocolIdentifier": protocol_identifier,
         "discoveryComplete": discovery_complete,
         "callSignalAddress": [_enc_transport(a) for a in call_signal_addresses],
         "rasAddress": [_enc_transport(a) for a in ras_addresses],
         "terminalType": _enc_endpoint_type(endpoint_type),
         "endpointVendor": _enc_vendor(vendor), "keepAlive": keep_alive},
        terminalAlias=_opt_aliases(aliases), gatekeeperIdentifier=gatekeeper_id,
        endpointIdentifier=endpoint_id, timeToLive=time_to_live,
        additiveRegistration=0 if additive else None))


def keep_alive_request(seq: int, *, endpoint_id: str, call_signal_addresses: Iterable[AddressLike],
                       ras_addresses: Iterable[AddressLike], vendor: Vendor = Vendor(),
                       gatekeeper_id: str | None = None, time_to_live: int | None = None,
                       endpoint_type: str = "terminal",
                       protocol_identifier: tuple[int, ...] = PROTOCOL_IDENTIFIER) -> bytes:
    """A lightweight (keep-alive) RRQ: keepAlive TRUE, endpointIdentifier, no aliases (H.323 lightweight registration)."""
    return registration_request(
        seq, call_signal_addresses=call_signal_addresses, ras_addresses=ras_addresses,
        vendor=vendor, endpoint_type=endpoint_type, gatekeeper_id=gatekeeper_id,
        endpoint_id=endpoint_id, time_to_live=time_to_live, keep_alive=True,
        protocol_identifier=protocol_identifier)


def registration_confirm(seq: int, *, endpoint_id: str,
                         call_signal_addresses: Iterable[AddressLike] = (),
                         aliases: Iterable[AliasLike] = (), gatekeeper_id: str | None = None,
                         time_to_live: int | None = None, will_respond_to_irr: bool = False,
                         protocol_identifier: tuple[int, ...] = PROTOCOL_IDENTIFIER) -> bytes:
    """RCF. ``call_signal_addresses`` is the gatekeeper's (empty for the direct call model)."""
    return encode_raw("registrationConfirm", _optional(
        {"requestSeqNum": seq, "protocolIdentifier": protocol_identifier,
         "callSignalAddress": [_enc_transport(a) for a in call_signal_addresses],
         "endpointIdentifier": endpoint_id, "willRespondToIRR": will_respond_to_irr},
        terminalAlias=_opt_aliases(aliases), gatekeeperIdentifier=gatekeeper_id,
        timeToLive=time_to_live))


def registration_reject(seq: int, reason: str = "resourceUnavailable", *,
                        duplicate_aliases: Iterable[AliasLike] = (),
                        gatekeeper_id: str | None = None,
                        protocol_identifier: tuple[int, ...] = PROTOCOL_IDENTIFIER) -> bytes:
    """RRJ. ``reason="duplicateAlias"`` carries ``duplicate_aliases``."""
    if reason == "duplicateAlias":
        reject: tuple[str, Any] = ("duplicateAlias", _enc_aliases(duplicate_aliases))
    else:
        reject = _null_choice("registrationReject", "rejectReason", reason)
    return encode_raw("registrationReject", _optional(
        {"requestSeqNum": seq, "protocolIdentifier": protocol_identifier, "rejectReason": reject},
        gatekeeperIdentifier=gatekeeper_id))


# --- URQ / UCF / URJ: unregistration, either direction

def unregistration_request(seq: int, *, call_signal_addresses: Iterable[AddressLike] = (),
                           aliases: Iterable[AliasLike] = (), endpoint_id: str | None = None,
                           gatekeeper_id: str | None = None, reason: str | None = None) -> bytes:
    """URQ from an endpoint, or from the gatekeeper with e.g. ``reason="ttlExpired"``."""
    return encode_raw("unregistrationRequest", _optional(
        {"requestSeqNum": seq,
         "callSignalAddress": [_enc_transport(a) for a in call_signal_addresses]},
        endpointAlias=_opt_aliases(aliases), endpointIdentifier=endpoint_id,
        gatekeeperIdentifier=gatekeeper_id,
        reason=None if reason is None else _null_choice("unregistrationRequest", "reason", reason)))


def unregistration_confirm(seq: int) -> bytes:
    return encode_raw("unregistrationConfirm", {"requestSeqNum": seq})


def unregistration_reject(seq: int, reason: str = "notCurrentlyRegistered") -> bytes:
    return encode_raw("unregistrationReject", {
        "requestSeqNum": seq,
        "rejectReason": _null_choice("unregistrationReject", "rejectReason", reason)})


# --- ARQ / ACF / ARJ: admission

def admission_request(seq: int, *, endpoint_id: str, src_aliases: Iterable[AliasLike],
                      call_identifier: bytes, conference_id: bytes, bandwidth: int,
                      call_reference_value: int, dest_aliases: Iterable[AliasLike] = (),
                      dest_call_signal_address: AddressLike | None = None,
                      src_call_signal_address: AddressLike | None = None,
                      answer_call: bool = False, call_type: str = "pointToPoint",
                      call_model: str | None = None, gatekeeper_id: str | None = None,
                      can_map_alias: bool = False, active_mc: bool = False) -> bytes:
    """ARQ. ``bandwidth`` in 100 bit/s units (both directions together, as H.225.0 BandWidth)."""
    return encode_raw("admissionRequest", _optional(
        {"requestSeqNum": seq,
         "callType": _null_choice("admissionRequest", "callType", call_type),
         "endpointIdentifier": endpoint_id, "srcInfo": _enc_aliases(src_aliases),
         "bandWidth": bandwidth, "callReferenceValue": call_reference_value,
         "conferenceID": _guid(conference_id, "conferenceID"),
         "activeMC": active_mc, "answerCall": answer_call, "canMapAlias": can_map_alias,
         "callIdentifier": {"guid": _guid(call_identifier, "callIdentifier")}},
        callModel=None if call_model is None else _null_choice("admissionRequest", "callModel", call_model),
        destinationInfo=_opt_aliases(dest_aliases),
        destCallSignalAddress=None if dest_call_signal_address is None else _enc_transport(dest_call_signal_address),
        srcCallSignalAddress=None if src_call_signal_address is None else _enc_transport(src_call_signal_address),
        gatekeeperIdentifier=gatekeeper_id))


def admission_confirm(seq: int, *, bandwidth: int, dest_call_signal_address: AddressLike,
                      call_model: str = "direct", dest_aliases: Iterable[AliasLike] = (),
                      irr_frequency: int | None = None, will_respond_to_irr: bool = False) -> bytes:
    """ACF. ``irr_frequency`` (seconds) asks the endpoint for periodic IRRs during the call."""
    return encode_raw("admissionConfirm", _optional(
        {"requestSeqNum": seq, "bandWidth": bandwidth,
         "callModel": _null_choice("admissionConfirm", "callModel", call_model),
         "destCallSignalAddress": _enc_transport(dest_call_signal_address),
         "willRespondToIRR": will_respond_to_irr},
        irrFrequency=irr_frequency, destinationInfo=_opt_aliases(dest_aliases)))


def admission_reject(seq: int, reason: str = "resourceUnavailable") -> bytes:
    return encode_raw("admissionReject", {
        "requestSeqNum": seq,
        "rejectReason": _null_choice("admissionReject", "rejectReason", reason)})


# --- BRQ / BCF / BRJ: bandwidth change

def bandwidth_request(seq: int, *, endpoint_id: str, conference_id: bytes, call_identifier: bytes,
                      call_reference_value: int, bandwidth: int, answered_call: bool = False,
                      call_type: str | None = None, gatekeeper_id: str | None = None) -> bytes:
    return encode_raw("bandwidthRequest", _optional(
        {"requestSeqNum": seq, "endpointIdentifier": endpoint_id,
         "conferenceID": _guid(conference_id, "conferenceID"),
         "callReferenceValue": call_reference_value, "bandWidth": bandwidth,
         "callIdentifier": {"guid": _guid(call_identifier, "callIdentifier")},
         "answeredCall": answered_call},
        callType=None if call_type is None else _null_choice("bandwidthRequest", "callType", call_type),
        gatekeeperIdentifier=gatekeeper_id))


def bandwidth_confirm(seq: int, *, bandwidth: int) -> bytes:
    return encode_raw("bandwidthConfirm", {"requestSeqNum": seq, "bandWidth": bandwidth})


def bandwidth_reject(seq: int, reason: str = "insufficientResources", *, allowed_bandwidth: int = 0) -> bytes:
    return encode_raw("bandwidthReject", {
        "requestSeqNum": seq, "allowedBandWidth": allowed_bandwidth,
        "rejectReason": _null_choice("bandwidthReject", "rejectReason", reason)})


# --- DRQ / DCF / DRJ: disengage

def disengage_request(seq: int, *, endpoint_id: str, conference_id: bytes, call_identifier: bytes,
                      call_reference_value: int, reason: str = "normalDrop",
                      answered_call: bool = False, gatekeeper_id: str | None = None) -> bytes:
    """DRQ from an endpoint (``normalDrop``) or from the gatekeeper (``forcedDrop``)."""
    return encode_raw("disengageRequest", _optional(
        {"requestSeqNum": seq, "endpointIdentifier": endpoint_id,
         "conferenceID": _guid(conference_id, "conferenceID"),
         "callReferenceValue": call_reference_value,
         "disengageReason": _null_choice("disengageRequest", "disengageReason", reason),
         "callIdentifier": {"guid": _guid(call_identifier, "callIdentifier")},
         "answeredCall": answered_call},
        gatekeeperIdentifier=gatekeeper_id))


def disengage_confirm(seq: int) -> bytes:
    return encode_raw("disengageConfirm", {"requestSeqNum": seq})


def disengage_reject(seq: int, reason: str = "notRegistered") -> bytes:
    return encode_raw("disengageReject", {
        "requestSeqNum": seq,
        "rejectReason": _null_choice("disengageReject", "rejectReason", reason)})


# --- LRQ / LCF / LRJ: location

def location_request(seq: int, *, dest_aliases: Iterable[AliasLike], reply_address: AddressLike,
                     endpoint_id: str | None = None, source_aliases: Iterable[AliasLike] = (),
                     gatekeeper_id: str | None = None, call_identifier: bytes | None = None,
                     bandwidth: int | None = None, can_map_alias: bool = False) -> bytes:
    return encode_raw("locationRequest", _optional(
        {"requestSeqNum": seq, "destinationInfo": _enc_aliases(dest_aliases),
         "replyAddress": _enc_transport(reply_address), "canMapAlias": can_map_alias},
        endpointIdentifier=endpoint_id, sourceInfo=_opt_aliases(source_aliases),
        gatekeeperIdentifier=gatekeeper_id, bandWidth=bandwidth,
        callIdentifier=None if call_identifier is None else {"guid": _guid(call_identifier, "callIdentifier")}))


def location_confirm(seq: int, *, call_signal_address: AddressLike, ras_address: AddressLike,
                     dest_aliases: Iterable[AliasLike] = ()) -> bytes:
    return encode_raw("locationConfirm", _optional(
        {"requestSeqNum": seq, "callSignalAddress": _enc_transport(call_signal_address),
         "rasAddress": _enc_transport(ras_address)},
        destinationInfo=_opt_aliases(dest_aliases)))


def location_reject(seq: int, reason: str = "notRegistered") -> bytes:
    return encode_raw("locationReject", {
        "requestSeqNum": seq,
        "rejectReason": _null_choice("locationReject", "rejectReason", reason)})


# --- IRQ / IRR: status

def info_request(seq: int, *, call_reference_value: int = 0, call_identifier: bytes = ZERO_GUID,
                 reply_address: AddressLike | None = None) -> bytes:
    """IRQ; the defaults (CRV 0, zero GUID) ask about all the endpoint's calls."""
    return encode_raw("infoRequest", _optional(
        {"requestSeqNum": seq, "callReferenceValue": call_reference_value,
         "callIdentifier": {"guid": _guid(call_identifier, "callIdentifier")}},
        replyAddress=None if reply_address is None else _enc_transport(reply_address)))


def _enc_call_info(c: CallInfo) -> dict:
    return _optional(
        {"callReferenceValue": c.call_reference_value,
         "conferenceID": _guid(c.conference_id, "conferenceID"),
         "h245": {}, "callSignalling": {},
         "callType": _null_choice("admissionRequest", "callType", c.call_type),
         "bandWidth": c.bandwidth,
         "callModel": _null_choice("admissionConfirm", "callModel", c.call_model),
         # mandatory additions of perCallInfo entries
         "callIdentifier": {"guid": _guid(c.call_identifier, "callIdentifier")},
         "substituteConfIDs": []},
        originator=c.originator)


def info_request_response(seq: int, *, endpoint_id: str, ras_address: AddressLike,
                          call_signal_addresses: Iterable[AddressLike],
                          aliases: Iterable[AliasLike] = (), endpoint_type: str = "terminal",
                          vendor: Vendor | None = None, calls: Iterable[CallInfo] = (),
                          need_response: bool = False, unsolicited: bool = False) -> bytes:
    """IRR, solicited (answering an IRQ's ``seq``) or ``unsolicited`` (per ACF irrFrequency)."""
    per_call = [_enc_call_info(c) for c in calls]
    return encode_raw("infoRequestResponse", _optional(
        {"requestSeqNum": seq, "endpointType": _enc_endpoint_type(endpoint_type, vendor),
         "endpointIdentifier": endpoint_id, "rasAddress": _enc_transport(ras_address),
         "callSignalAddress": [_enc_transport(a) for a in call_signal_addresses],
         "needResponse": need_response, "unsolicited": unsolicited},
        endpointAlias=_opt_aliases(aliases), perCallInfo=per_call or None))


# --- RIP / XRS

def request_in_progress(seq: int, *, delay_ms: int) -> bytes:
    """RIP (RequestInProgress): "still working on it, wait ``delay_ms``" (e.g. while asking upstream)."""
    return encode_raw("requestInProgress", {"requestSeqNum": seq, "delay": delay_ms})


def unknown_message_response(seq: int, message: bytes = b"") -> bytes:
    """XRS (UnknownMessageResponse): the answer to a message the gatekeeper does not understand."""
    return encode_raw("unknownMessageResponse", {"requestSeqNum": seq, "messageNotUnderstood": bytes(message)})
