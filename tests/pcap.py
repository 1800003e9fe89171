"""A tiny classic-pcap writer: UDP payloads wrapped in hand-built Ethernet/IPv4/UDP headers.

Enough for tshark to dissect what our codecs encode (libpcap file format, LINKTYPE_ETHERNET;
RFC 791 IPv4 header with its checksum; RFC 768 UDP with checksum 0, "no checksum", legal on IPv4).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Iterable, NamedTuple

__all__ = ["Datagram", "write_pcap", "pcap_bytes"]

_PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
_LINKTYPE_ETHERNET = 1
_SNAPLEN = 65535
_ETHERTYPE_IPV4 = 0x0800
_IPPROTO_UDP = 17


class Datagram(NamedTuple):
    payload: bytes
    src: tuple[str, int] = ("127.0.0.1", 1719)
    dst: tuple[str, int] = ("127.0.0.1", 1719)


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(d: Datagram, ident: int) -> bytes:
    udp = struct.pack("!HHHH", d.src[1], d.dst[1], 8 + len(d.payload), 0) + d.payload
    src, dst = ipaddress.IPv4Address(d.src[0]).packed, ipaddress.IPv4Address(d.dst[0]).packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, 64, _IPPROTO_UDP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", _ETHERTYPE_IPV4)
    return eth + ip + udp


def pcap_bytes(datagrams: Iterable[Datagram]) -> bytes:
    out = [struct.pack("<IHHiIII", _PCAP_MAGIC, 2, 4, 0, 0, _SNAPLEN, _LINKTYPE_ETHERNET)]
    for i, d in enumerate(datagrams):
        frame = _frame(d, i)
        # Fixed, increasing timestamps (one per second from the epoch): tests read no clock.
        out.append(struct.pack("<IIII", i, 0, len(frame), len(frame)) + frame)
    return b"".join(out)


def write_pcap(path, datagrams: Iterable[Datagram]) -> None:
    with open(path, "wb") as f:
        f.write(pcap_bytes(datagrams))
