"""A narrow fix for pycrate 0.8.1's aligned-PER encoder of extended SEQUENCEs (X.691 §19).

The bug
-------
``pycrate_asn1rt.asnobj_construct._CONSTRUCT._to_per`` (SEQUENCE and SET) encodes the extension
additions as open types *before* it writes the extension bitmap that precedes them on the wire,
while ``ASN1CodecPER._off[-1]`` (the bit offset aligned PER pads against) still points at the end
of the root part. ``ASN1CodecPER.encode_unconst_open`` therefore pads the first open type to an
octet boundary computed without the bitmap; then the bitmap is written and padded again, from an
offset that now counts the first padding and the open types but not where the bitmap really is.
The two paddings together are the right length modulo 8, so the output is either correct (root part
ends on an octet boundary, first padding empty) or carries exactly one spurious ``00`` octet between
the bitmap and the first open type (root part ends mid-octet). pycrate's own decoder, which reads in
wire order, and Wireshark both reject such messages. In H.225.0 RAS this hits GRQ, ARQ, DRQ and
ACF (through ``UUIEsRequested``) among others.

The fix
-------
:func:`apply` wraps ``_CONSTRUCT._to_per``: when aligned PER is on and extension additions are
present, it lets pycrate encode the root part alone (with the extension values hidden), sets the
extension bit that pycrate then wrote as 0, and writes the extension part itself in wire order:
the length of the bitmap as a normally small length (§11.9), the bitmap, the padding to an octet
boundary, then each present addition as an open type (§11.2). Unaligned PER, the
structure-building ``_to_per_ws`` variant (not used by our codec), decoding and everything else stay
pycrate's. :func:`unpatched` restores the original for the test that reproduces the bug.

Like pycrate itself this relies on class attributes (``ASN1CodecPER._off``): use it from one thread.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from pycrate_asn1rt.asnobj_construct import _CONSTRUCT
from pycrate_asn1rt.codecs import ASN1CodecPER
from pycrate_asn1rt.utils import T_UINT

__all__ = ["apply", "is_applied", "unpatched", "original_to_per"]

#: pycrate's own method, kept to delegate to and to restore.
original_to_per: Callable[[Any], list] = _CONSTRUCT._to_per

# X.691 §11.9: a "normally small" length is 1 bit 0 + 6 bits (n - 1) when n <= 64.
_NORMALLY_SMALL_MAX = 64


def _to_per_fixed(self: Any) -> list:
    if not ASN1CodecPER.ALIGNED or self._ext is None or not self._val:
        return original_to_per(self)
    val = self._val
    ext_names = set(self._ext)
    ext_keys = [k for k in val if k in ext_names or k[:5] == "_ext_"]
    if not ext_keys:
        return original_to_per(self)
    # 1. Root part, encoded by pycrate with the extension values hidden (its offsets are right).
    self._val = {k: v for k, v in val.items() if k not in ext_keys}
    try:
        gen = original_to_per(self)
    finally:
        self._val = val
    # 2. Which additions are present, by 1-based position in the extension bitmap (X.691 §19).
    present: list[tuple[int, Any, Any]] = []  # (position, component or None, value)
    for pos, ident in enumerate(self._ext_nest, 1):
        if isinstance(ident, list):  # an extension group [[ ... ]] travels as one open type
            group = {k: val[k] for k in ident if k in val}
            if group:
                present.append((pos, self._ext_group_obj[self._ext_ident[ident[0]]], group))
        elif ident in val:
            present.append((pos, self._cont[ident], val[ident]))
    for key in sorted((k for k in ext_keys if k[:5] == "_ext_"), key=lambda k: int(k[5:])):
        # An unknown addition kept by pycrate's decoder as raw open-type octets under `_ext_<i>`,
        # i being its 0-based bitmap index (pycrate's encoder reads it as 1-based: one more bug).
        pos = int(key[5:]) + 1
        if pos > len(self._ext_nest) and all(p != pos for p, _, _ in present):
            present.append((pos, None, val[key]))
    if not present:  # only misplaced `_ext_<i>` keys: nothing to add, the root part is the encoding
        return gen
    # X.691 §19: the first bit is the extension bit; pycrate wrote 0 since it saw no addition.
    if not gen or gen[0] != (T_UINT, 0, 1):
        raise AssertionError("pycrate SEQUENCE encoding does not start with its extension bit")
    gen[0] = (T_UINT, 1, 1)
    # 3. Bitmap length as a normally small length, then the bitmap, then octet alignment.
    nbits = max(len(self._ext_nest), max(p for p, _, _ in present))
    if nbits <= _NORMALLY_SMALL_MAX:
        gen.append((T_UINT, nbits - 1, 7))
        ASN1CodecPER._off[-1] += 7
    else:
        gen.append((T_UINT, 1, 1))
        ASN1CodecPER._off[-1] += 1
        gen.extend(ASN1CodecPER.encode_intunconst(nbits - 1, 0))
    gen.append((T_UINT, sum(1 << (nbits - p) for p, _, _ in present), nbits))
    ASN1CodecPER._off[-1] += nbits
    if ASN1CodecPER._off[-1] % 8:
        gen.extend(ASN1CodecPER.encode_pad())
    # 4. Each present addition as an open type (X.691 §11.2), now starting on the right octet.
    for _pos, comp, value in present:
        if comp is None:
            gen.extend(ASN1CodecPER.encode_unconst_buf(value))
            continue
        parent = comp._parent
        comp._parent = self
        comp._val = value
        try:
            gen.extend(ASN1CodecPER.encode_unconst_open(comp))
        finally:
            comp._parent = parent
    return gen


def apply() -> None:
    """Install the fix (idempotent). Affects every pycrate user in the process, which is the point."""
    _CONSTRUCT._to_per = _to_per_fixed


def is_applied() -> bool:
    return _CONSTRUCT.__dict__.get("_to_per") is _to_per_fixed


@contextmanager
def unpatched() -> Iterator[None]:
    """Run a block with pycrate's original (buggy) encoder; for the test that reproduces the bug.

    Load the codec first (``meter.codecs.ras.load()``): loading inside the block re-applies the fix.
    """
    was = is_applied()
    _CONSTRUCT._to_per = original_to_per
    try:
        yield
    finally:
        if was:
            apply()
