"""H.225.0 RAS load for the load generator: RRQ, ARQ and DRQ datagrams and a cheap answer matcher.

Requests are encoded once, before the clock starts, with the node's own codec (``meter.codecs.ras``).
Answers are not decoded on the hot path (pycrate costs ~300 us a message, as much as the node's own
work): the RasMessage CHOICE index sits in the first octet (aligned PER, H.225.0 RasMessage), and
``requestSeqNum`` (INTEGER 1..65535, two octets) at a fixed octet per message type, found once by
encoding a sample of each answer with a known number.
"""

from __future__ import annotations

from functools import lru_cache

from bench.devices import population

# RasMessage root alternatives we expect back, by CHOICE index: confirm -> 200, reject -> 403.
_ANSWERS = {
    "RCF": (4, 200), "RRJ": (5, 403), "ACF": (10, 200), "ARJ": (11, 403), "DCF": (16, 200), "DRJ": (17, 403),
}
MAX_REQUESTS = 65535  # requestSeqNum is 16 bits: one run numbers its requests 1..65535


@lru_cache(maxsize=1)
def _offsets() -> dict[int, tuple[int, int]]:
    """CHOICE index -> (octet offset of requestSeqNum, status), measured on the codec's own output."""
    from meter.codecs import ras

    samples = {
        "RCF": ras.registration_confirm(0x1234, endpoint_id="EP1"),
        "RRJ": ras.registration_reject(0x1234),
        "ACF": ras.admission_confirm(0x1234, bandwidth=100, dest_call_signal_address=("127.0.0.1", 1720)),
        "ARJ": ras.admission_reject(0x1234),
        "DCF": ras.disengage_confirm(0x1234),
        "DRJ": ras.disengage_reject(0x1234),
    }
    out = {}
    for name, data in samples.items():
        index, status = _ANSWERS[name]
        if data[0] >> 7 or (data[0] >> 2) & 0x1F != index:
            raise RuntimeError(f"{name}: unexpected CHOICE octet {data[0]:#04x}")
        offset = data.find(b"\x12\x33")  # aligned PER writes value - lower bound (1)
        if offset < 1:
            raise RuntimeError(f"{name}: requestSeqNum not found in {data.hex()}")
        out[index] = (offset, status)
    return out


def classify(data: bytes) -> tuple[int, int] | None:
    """``(request number, status)`` for an answer: request number = requestSeqNum - 1."""
    if not data:
        return None
    if data[0] >> 7:  # an extension alternative: requestInProgress (H.225.0 v2+), i.e. provisional
        return None
    found = _offsets().get((data[0] >> 2) & 0x1F)
    if found is None:
        return None
    offset, status = found
    return int.from_bytes(data[offset:offset + 2], "big"), status


def alias(index: int) -> str:
    return f"ras{index:06d}"


def call_signal_address(index: int) -> tuple[str, int]:
    """A distinct address per endpoint (a gatekeeper tells endpoints apart by it); 127.1.0.0/16
    is loopback, and nothing is ever sent there: RAS only carries it."""
    return f"127.1.{index // 256 % 256}.{index % 256}", 1720


def rrq_builder(count: int, first: int = 0):
    """RRQ for endpoint ``first + i``: one h323-ID and one E.164 alias (rule R9 counts both), the
    endpoint's model in its vendor identifier (every H.323 registration takes a room license, R4)."""
    from meter.codecs import ras

    devices = population(first + count)

    def build(i: int, local: tuple[str, int]) -> bytes:
        n = first + i
        device = devices[n]
        return ras.registration_request(
            i + 1, call_signal_addresses=[call_signal_address(n)], ras_addresses=[local],
            aliases=[("h323-ID", alias(n)), ("dialledDigits", f"{700000 + n}")],
            vendor=ras.Vendor(product_id=device.model, version_id=device.user_agent),
        )

    return build


def _guid(i: int, salt: int) -> bytes:
    return salt.to_bytes(4, "big") + i.to_bytes(12, "big")


def arq_builder(registered: list[tuple[int, str]], salt: int = 1):
    """ARQ ``i`` from registered endpoint ``i mod n`` to the next one (a call between two rooms).

    ``registered`` is ``[(endpoint index, endpointIdentifier), ...]`` from the RRQ phase.
    """
    from meter.codecs import ras

    n_eps = len(registered)

    def build(i: int, local: tuple[str, int]) -> bytes:
        src, endpoint_id = registered[i % n_eps]
        dst = registered[(i + 1) % n_eps][0]
        return ras.admission_request(
            i + 1, endpoint_id=endpoint_id, src_aliases=[("h323-ID", alias(src))],
            call_identifier=_guid(i, salt), conference_id=_guid(i, salt + 1), bandwidth=7680,
            call_reference_value=(i % 32767) + 1, dest_aliases=[("h323-ID", alias(dst))])

    return build


def drq_builder(registered: list[tuple[int, str]], salt: int = 1):
    """DRQ ``i`` ending the call ARQ ``i`` opened (same endpoint, call and conference identifiers)."""
    from meter.codecs import ras

    n_eps = len(registered)

    def build(i: int, local: tuple[str, int]) -> bytes:
        return ras.disengage_request(
            i + 1, endpoint_id=registered[i % n_eps][1], conference_id=_guid(i, salt + 1),
            call_identifier=_guid(i, salt), call_reference_value=(i % 32767) + 1)

    return build


def endpoint_ids(responses: list[bytes | None]) -> list[str | None]:
    """The endpointIdentifier of each RCF (None where the answer was not an RCF)."""
    from meter.codecs import ras

    out = []
    for data in responses:
        try:
            msg = ras.decode(data) if data else None
        except ras.RASError:
            msg = None
        out.append(msg.endpoint_identifier if msg is not None and msg.short == "RCF" else None)
    return out
