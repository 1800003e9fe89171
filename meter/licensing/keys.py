"""Option keys (PAK mode): our own signed, serial-bound key string (K1, K2; format below).

Cisco's key format is not public, so the meter defines its own. A lab issuer holding an Ed25519
private key issues keys; every node verifies them with the issuer's public key.

Format (version 1)::

    MTR1-<base64url, no padding, of: payload || signature || checksum>

    payload    UTF-8 text, eight fields joined by "|":
               1|<key id>|<option>|<quantity>|<expires>|<serial>|<issued at>|<issuer>
                 key id     16 hex digits, random: tells two keys with equal fields apart
                 option     option type code, e.g. RMS, ROOM, HSM (options.OPTIONS)
                 quantity   positive integer (1 for feature options)
                 expires    POSIX seconds when a time-limited (demo) key stops, or "-" for none (K5)
                 serial     the node serial the key is bound to
                 issued at  POSIX seconds
                 issuer     16 hex digits: SHA-256 of the issuer's raw public key, first 8 bytes
    signature  64 bytes, Ed25519 over the payload bytes
    checksum   4 bytes, SHA-256 of payload || signature, first 4 bytes

Decoding is strict (K4, "altered"): the text must be exactly the encoding ``issue_key`` writes. A
base64 decoder is lenient by default (it skips characters outside its alphabet, accepts ``=``
padding, the ``+/`` alphabet, and ignores the unused low bits of the last character), so several
strings would decode to one valid key; every one but the canonical one is refused as altered.

Why refusals differ: the checksum is not secret, it only proves the string is whole. A key whose
checksum does not match was changed after it was issued ("altered": a typo or an edit). A key
whose checksum matches but whose signature does not verify, or whose issuer is not the one this
node trusts, was made by someone without the issuer's private key ("forged").
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meter.licensing.options import OPTIONS

PREFIX = "MTR1-"
_SIG, _CHECK = 64, 4
_SERIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_OPTION = re.compile(r"[A-Z][A-Z0-9_]{0,39}")
_HEX16 = re.compile(r"[0-9a-f]{16}")

# Refusal reasons, each with the words the CLI and API show.
REASONS: dict[str, str] = {
    "malformed": "not a meter option key",
    "altered": "the key was changed after it was issued (checksum mismatch): re-enter it exactly",
    "forged": "the signature does not verify with this node's trusted issuer key",
    "other_serial": "the key was issued for another node serial",
    "expired": "the key has expired",
    "unknown_option": "unknown option type",
    "smart_mode": "Smart licensing is active: option keys cannot be added and have no effect (L3)",
    "duplicate": "this key is already installed",
}


class KeyRefused(Exception):
    """An option key this node will not accept. ``reason`` is a key of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {REASONS[reason]}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True, slots=True)
class OptionKey:
    key_id: str
    option: str
    quantity: int
    expires: float | None
    serial: str
    issued_at: float
    issuer: str
    text: str

    @property
    def demo(self) -> bool:
        """Time-limited (K5)."""
        return self.expires is not None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


def fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _lenient_b64decode(text: str) -> bytes:
    """Every spelling a lenient decoder takes (either alphabet, padding or not, stray characters
    skipped): so that a spelling of a valid key is told apart, as altered, from a non-key."""
    return base64.b64decode(text.replace("-", "+").replace("_", "/") + "==")


def issue_key(
    private_key: Ed25519PrivateKey,
    *,
    serial: str,
    option: str,
    quantity: int = 1,
    expires: float | None = None,
    issued_at: float,
    key_id: str | None = None,
) -> str:
    """Issue a key for ``serial``. Any well-formed option code is signed: the node decides
    whether it knows it (a newer issuer may know more options than an older node)."""
    option = option.upper()
    if not _SERIAL.fullmatch(serial):
        raise ValueError(f"serial: expected letters, digits and '-', got {serial!r}")
    if not _OPTION.fullmatch(option):
        raise ValueError(f"option: expected an option code like RMS or HSM, got {option!r}")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise ValueError(f"quantity: expected a positive integer, got {quantity!r}")
    key_id = key_id or secrets.token_hex(8)
    if not _HEX16.fullmatch(key_id):
        raise ValueError(f"key_id: expected 16 hex digits, got {key_id!r}")
    exp = "-" if expires is None else str(int(expires))
    issuer = fingerprint(private_key.public_key())
    payload = f"1|{key_id}|{option}|{quantity}|{exp}|{serial}|{int(issued_at)}|{issuer}".encode()
    signature = private_key.sign(payload)
    check = hashlib.sha256(payload + signature).digest()[:_CHECK]
    return PREFIX + _b64encode(payload + signature + check)


def decode_key(text: str) -> tuple[OptionKey, bytes, bytes]:
    """Parse a key string (no signature check): (key, payload, signature). Raises KeyRefused."""
    text = text.strip()
    if not text.startswith(PREFIX):
        raise KeyRefused("malformed", f"expected a key starting with {PREFIX}")
    body = text[len(PREFIX):]
    try:
        blob = _lenient_b64decode(body)
    except (ValueError, TypeError):
        raise KeyRefused("malformed", "not base64url") from None
    if len(blob) <= _SIG + _CHECK:
        raise KeyRefused("malformed", "too short")
    payload, signature, check = blob[:-_SIG - _CHECK], blob[-_SIG - _CHECK:-_CHECK], blob[-_CHECK:]
    if hashlib.sha256(payload + signature).digest()[:_CHECK] != check:
        raise KeyRefused("altered")
    if _b64encode(blob) != body:  # the bytes of a whole key, spelt another way
        raise KeyRefused("altered", "not the key's exact encoding")
    try:
        fields = payload.decode("utf-8").split("|")
        version, key_id, option, quantity, exp, serial, issued_at, issuer = fields
        if version != "1" or not _HEX16.fullmatch(key_id) or not _HEX16.fullmatch(issuer) \
                or not _OPTION.fullmatch(option) or not _SERIAL.fullmatch(serial):
            raise ValueError
        key = OptionKey(
            key_id=key_id, option=option, quantity=int(quantity),
            expires=None if exp == "-" else float(int(exp)),
            serial=serial, issued_at=float(int(issued_at)), issuer=issuer, text=text,
        )
        if key.quantity < 1:
            raise ValueError
    except ValueError:
        raise KeyRefused("malformed", "payload fields") from None
    return key, payload, signature


def verify_key(
    public_key: Ed25519PublicKey,
    serial: str,
    key: str,
    now: float,
    *,
    smart_mode: bool = False,
) -> OptionKey:
    """Accept ``key`` for the node with ``serial`` at ``now``, or raise KeyRefused with the reason."""
    if smart_mode:
        raise KeyRefused("smart_mode")
    option_key, payload, signature = decode_key(key)
    trusted = fingerprint(public_key)
    if option_key.issuer != trusted:
        raise KeyRefused("forged", f"issued by {option_key.issuer}, this node trusts {trusted}")
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise KeyRefused("forged") from None
    if option_key.serial != serial:
        raise KeyRefused("other_serial", f"key for {option_key.serial}, this node is {serial}")
    if option_key.option not in OPTIONS:
        raise KeyRefused("unknown_option", option_key.option)
    if option_key.expired(now):
        raise KeyRefused("expired", f"at {option_key.expires:.0f}")
    return option_key
