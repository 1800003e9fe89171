"""Frames between the owner and a worker: a 4-byte length, then a pickled tuple.

Pickle is safe here: the socket pair is created by the owner and inherited by the worker it starts,
so nothing else can write to it (no listening address, no file on disk).
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

_LENGTH = struct.Struct("!I")
# A frame carries one message's facts or one AOR's bindings (at most 32, meter.sip.location);
# the config frame is the largest. Anything beyond this is a bug, not data.
MAX_FRAME_BYTES = 16 * 1024 * 1024


def frame(message: tuple) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class FrameProtocol(asyncio.Protocol):
    """Each complete frame, as it arrives, to ``on_message``; ``on_closed`` once at the end.
    (A protocol rather than a StreamReader: one buffer pass per read, not two awaits per frame.)"""

    def __init__(self, on_message: Callable[[tuple], None], on_closed: Callable[[], None]) -> None:
        self._on_message, self._on_closed = on_message, on_closed
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos, end_of_data = 0, len(buffer)
        while end_of_data - pos >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, pos)
            if size > MAX_FRAME_BYTES:
                raise ValueError(f"worker link: a frame of {size} bytes")
            end = pos + _LENGTH.size + size
            if end > end_of_data:
                break
            message = pickle.loads(buffer[pos + _LENGTH.size:end])
            pos = end
            self._on_message(message)
        if pos:
            del buffer[:pos]

    def connection_lost(self, exc) -> None:
        self._on_closed()


def read_frame_blocking(sock: socket.socket) -> Any:
    """The first frame, before the worker's event loop runs (its configuration)."""
    head = _recv_exactly(sock, _LENGTH.size)
    (size,) = _LENGTH.unpack(head)
    return pickle.loads(_recv_exactly(sock, size))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise EOFError("the owner closed the worker link")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
