"""Socket tuning shared by the UDP listeners (SIP and RAS)."""

from __future__ import annotations

import socket

# A registration avalanche arrives faster than one event loop drains it: the kernel's default
# receive buffer (212,992 B here) holds about 125 REGISTERs, so a burst of 200 lost 75 (bench/,
# BENCHMARKS.md). 4 MiB holds ~2,500; the kernel caps it at net.core.rmem_max, which labs raise
# for SIP servers as Kamailio's and Asterisk's tuning guides advise.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def enlarge_receive_buffer(transport) -> int:
    """Ask for UDP_RECEIVE_BUFFER on a datagram transport's socket; returns what the kernel granted."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:  # not permitted here: keep the default rather than fail to start
        return 0


def primary_address() -> str:
    """The address of the interface that routes outward; a UDP connect sends no packet."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1 (RFC 5737): never actually reached
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def valid_hostport(text: str) -> bool:
    """"host:port" with a port in 1..65535 (the form of every upstream and zone target setting)."""
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
