"""One SIP worker process: ``python -m meter.workers.worker <fd>``, started by the owner
(``meter.workers.pool``) with its end of a socket pair. Not a command for operators."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import signal
import socket
import sys

from meter import logs
from meter.logs import log_event
from meter.workers.link import FrameProtocol, frame, read_frame_blocking

log = logging.getLogger("meter.workers")
STATS_INTERVAL_SECONDS = 1.0  # the owner's /metrics is at most this far behind a worker's counts
_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    _die_with_owner()
    kind, sections, source, index, shared_port = read_frame_blocking(sock)
    from meter.config import Config

    sections = dict(sections)
    sections["sip"] = dataclasses.replace(sections["sip"], port=shared_port)  # the port 0 resolved
    config = Config(sections=sections, source=source)
    logs.configure(config.log.level, config.log.json)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(config, index, sock))
    except OSError as exc:
        log_event(log, "workers.cannot_start", logging.ERROR, worker=index, error=str(exc))
        return 1
    return 0


def _die_with_owner() -> None:
    """Linux: SIGTERM when the owner dies, even by kill -9 (its dialogs cannot outlive its ledger)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the closed link stops the worker instead


async def serve(config, index: int, sock: socket.socket) -> None:
    from meter.admin.latency import LatencyHistogram, TimedReceiver
    from meter.app import build_admission
    from meter.sip.node import SipNode
    from meter.workers.remote import RemoteHooks
    from meter.zones import ZoneTable

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    gate = _Gate()
    hooks = None

    def received(message: tuple) -> None:
        if hooks is None:  # nothing but a stop comes before this worker said hello
            if message[0] == "stop":
                stop.set()
            return
        if message[0] == "synced":
            gate.open()  # every binding is here: serve
        elif not hooks.apply(message):
            stop.set()

    link, _ = await loop.create_connection(lambda: FrameProtocol(received, stop.set), sock=sock)

    def send(message: tuple) -> None:
        if not link.is_closing():  # the owner gone: outcomes have no one to tell
            link.write(frame(message))

    hooks = RemoteHooks(send, ZoneTable(config.zones), inline=config.sip.mode == "inline", clock=loop.time,
                        settled=64 * config.sip.t1)
    latency = LatencyHistogram()
    sip = SipNode(config.sip, hooks, wrap_receiver=lambda core: gate.around(TimedReceiver(core, latency)),
                  admission=build_admission(config), limits=config.limits)
    await sip.start()
    core = sip.core
    hooks.location = core.location
    core.registrar.replica = True  # bindings expire in the owner, which tells every worker
    core.registrar.answer_through(lambda reply: hooks.hold_register_answers(reply, loop.call_soon))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    send(("hello", sip.own_port))
    log_event(log, "workers.worker_started", worker=index, port=sip.port, own_port=sip.own_port)

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_SECONDS)
            send(("stats", sip.counters.snapshot(), list(latency.counts), latency.sum, sip.calls()))

    reporting = loop.create_task(report())
    await stop.wait()
    await sip.close()  # its calls end through the owner ("node shutdown"); bindings stay the owner's
    reporting.cancel()
    hooks.owner_gone()
    send(("stats", sip.counters.snapshot(), list(latency.counts), latency.sum, []))
    link.close()  # after what is buffered
    log_event(log, "workers.worker_stopped", worker=index)


class _Gate:
    """Datagrams are dropped (UDP retransmits them) until the owner has sent every binding: a
    worker that served before would answer 404 for aliases registered through the others."""

    __slots__ = ("inner", "_open")

    def __init__(self) -> None:
        self.inner = None
        self._open = False

    def around(self, inner) -> "_Gate":
        self.inner = inner
        return self

    def open(self) -> None:
        self._open = True

    def receive_datagram(self, data, source) -> None:
        if self._open:
            self.inner.receive_datagram(data, source)

    def receive_message(self, msg, source) -> None:
        if self._open:
            self.inner.receive_message(msg, source)

    def receive_error(self, err, source) -> None:
        if self._open:
            self.inner.receive_error(err, source)

    def __getattr__(self, name):  # anything else the transports ask of the core
        return getattr(self.inner, name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
