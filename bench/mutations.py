"""Mutations of real messages, as a Hypothesis strategy: the one mutator behind both the long
fuzzing runs (:mod:`bench.fuzz`, hypothesis engine) and the codec property tests
(tests/unit/test_codec_properties.py).

A seed message is edited a few times over: bytes flipped to syntax characters, random bytes
inserted, spans deleted or repeated, the tail of another seed spliced on, oversized numbers
dropped in. Inputs that stay close to a real message get past the start line and the framing,
where purely random bytes rarely do.
"""

from __future__ import annotations

from hypothesis import strategies as st

OPERATIONS = ("flip", "insert", "delete", "dup", "splice", "digits")
# What a flipped byte becomes: SIP/SDP separators and quoting (RFC 3261 §25.1), digits, NUL,
# and bytes that are not ASCII or not UTF-8.
FLIP_BYTES = b" \t\r\n:;,<>\"\\@%=/0123456789[]?&x\x00\x80\xff"
# Big numbers where numbers are (Content-Length, CSeq, Expires, ports): past 32 bits, past 64
# bits, negative, zero, one past the largest port.
NUMBERS = (b"4294967296", b"99999999999999999999", b"-1", b"0", b"65536")


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """One seed from ``seeds`` with 1 to 12 mutations; ``seeds`` must not be empty."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(OPERATIONS))
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.sampled_from(FLIP_BYTES))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i: i + draw(st.integers(1, 40))]
        elif op == "dup":
            j = draw(st.integers(i, min(len(data), i + 200)))
            data[j:j] = data[i:j] * draw(st.integers(1, 50))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            k = draw(st.integers(0, len(other)))
            data = data[:i] + other[k:]
        else:  # "digits"
            data[i:i] = draw(st.sampled_from(NUMBERS))
    return bytes(data)
