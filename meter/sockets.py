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
