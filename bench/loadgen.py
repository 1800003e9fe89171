"""REGISTER load generator: asyncio + uvloop, raw pre-built datagrams, loopback only.

Two shapes of load, both bounded in count (``requests``) and time (``deadline``):

* **closed loop** (``rate == 0``): at most ``window`` requests outstanding; each answer (or loss)
  lets the next one go. Measures throughput: how fast the target drains a registration avalanche.
* **open loop** (``rate > 0``): requests leave on a fixed schedule whatever the answers do, so
  latency is measured without the generator slowing down with the target (no coordinated
  omission). Measures added latency at a given load.

No retransmission (RFC 3261 Timer E is off): a request unanswered after ``timeout`` seconds is
counted lost, a later answer is counted ``late``. Requests carry their sequence number in the Via
branch (see :mod:`bench.sipmsg`), so matching an answer is one regex.

To keep the generator from being the bottleneck it sends from several sockets (a target with
SO_REUSEPORT workers spreads them by source port) and can run in several processes
(``procs``): each takes a contiguous slice of the endpoints, window and rate.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import socket
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

import uvloop

from bench import sipmsg
from bench.devices import population

_PENDING, _LOST = 0, 1  # status codes below 100: not answered yet, timed out
_TICK = 0.001  # open loop: 1 ms schedule granularity (3 requests per tick at 3000/s)
_SWEEP = 0.01  # how often timed-out requests are written off
_SOCKET_BUFFER = 4 * 1024 * 1024  # holds ~8000 REGISTERs: a burst never overflows our own socket


@dataclass(frozen=True)
class LoadSpec:
    """One load run against one target; every bound is explicit."""

    target: tuple[str, int]
    endpoints: int = 1000
    """Distinct endpoints (AORs bench000000...)."""
    first: int = 0
    """Index of the first endpoint (so phases can add registrations on top of standing ones)."""
    requests: int = 0
    """REGISTERs to send; 0 = one per endpoint. More than ``endpoints`` wraps round as refreshes."""
    window: int = 200
    """Closed loop: most requests outstanding at once."""
    rate: float = 0.0
    """Open loop: requests per second (0 = closed loop)."""
    timeout: float = 2.0
    """Seconds before an unanswered request counts as lost: 4*T1, well past any healthy answer."""
    deadline: float = 300.0
    """The whole run stops after this many seconds, answered or not."""
    sockets: int = 4
    """Source sockets (ports) per process."""
    contact: str = "127.0.0.1:5999"
    """host:port every endpoint's Contact points to (a SIPp UAS when calls follow)."""
    expires: int = 3600
    cseq_base: int = 1
    host: str = "127.0.0.1"
    """Local address the sockets bind to (loopback only)."""

    @property
    def total(self) -> int:
        return self.requests or self.endpoints


@dataclass
class LoadResult:
    """What one run saw. Latencies are nanoseconds, one per request answered in time."""

    requests: int = 0
    sent: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # final non-2xx answers by status code
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    stray: int = 0
    started_ns: int = 0
    ended_ns: int = 0
    latencies_ns: array = field(default_factory=lambda: array("q"))
    responses: list | None = None  # with keep=True: the final answer to each request (None if none)

    @property
    def elapsed(self) -> float:
        return max(self.ended_ns - self.started_ns, 1) / 1e9

    @property
    def answered(self) -> int:
        return self.ok + sum(self.failed.values())

    @property
    def throughput(self) -> float:
        """2xx answers per second, from the first send to the last answer."""
        return self.ok / self.elapsed

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds (nearest rank); NaN when nothing was answered."""
        data = sorted(self.latencies_ns)
        if not data:
            return math.nan
        rank = min(len(data) - 1, max(0, math.ceil(q / 100 * len(data)) - 1))
        return data[rank] / 1e6

    @classmethod
    def merge(cls, parts: list["LoadResult"]) -> "LoadResult":
        out = cls()
        for p in parts:
            out.requests += p.requests
            out.sent += p.sent
            out.ok += p.ok
            out.failed.update(p.failed)
            out.lost += p.lost
            out.late += p.late
            out.duplicates += p.duplicates
            out.stray += p.stray
            out.latencies_ns.extend(p.latencies_ns)
        out.started_ns = min(p.started_ns for p in parts)
        out.ended_ns = max(p.ended_ns for p in parts)
        return out

    def summary(self) -> str:
        failed = ",".join(f"{k}x{v}" for k, v in sorted(self.failed.items())) or "0"
        return (f"{self.ok}/{self.requests} ok in {self.elapsed:.2f}s = {self.throughput:,.0f}/s, "
                f"p50 {self.percentile(50):.2f} ms, p99 {self.percentile(99):.2f} ms, "
                f"lost {self.lost}, failed {failed}")


class _Protocol(asyncio.DatagramProtocol):
    __slots__ = ("_run",)

    def __init__(self, run: "_Run"):
        self._run = run

    def datagram_received(self, data: bytes, addr) -> None:
        self._run.on_response(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: the answer never comes
        self._run.icmp_errors += 1


#: ``build(i, local_address) -> datagram`` for request ``i`` of a run (default: a REGISTER).
Builder = Callable[[int, tuple[str, int]], bytes]
#: ``classify(datagram) -> (request number, status)`` or None; status < 200 is provisional, 2xx success.
Classifier = Callable[[bytes], "tuple[int, int] | None"]


class _Run:
    """The state of one process's share of a run: flat arrays indexed by request number."""

    def __init__(self, spec: LoadSpec, seq_base: int, builder: Builder | None = None,
                 classify: Classifier | None = None, keep: bool = False):
        self.spec = spec
        self.base = seq_base
        self.builder = builder
        self.classify = classify or sipmsg.response_key
        self.kept: list[bytes | None] | None = [None] * spec.total if keep else None
        n = spec.total
        self.n = n
        self.sent_ns = array("q", bytes(8 * n))
        self.lat_ns = array("q", bytes(8 * n))
        self.status = array("H", bytes(2 * n))
        self.packets: list[bytes] = []
        self.transports: list[asyncio.DatagramTransport] = []
        self.next = 0  # next request to send
        self.oldest = 0  # oldest request that may still be outstanding
        self.outstanding = 0
        self.result = LoadResult(requests=n)
        self.icmp_errors = 0
        self.done: asyncio.Future | None = None
        self.last_ns = 0

    def build(self, transports: list[asyncio.DatagramTransport]) -> None:
        spec = self.spec
        self.transports = transports
        vias = [t.get_extra_info("sockname")[:2] for t in transports]
        k = len(transports)
        # Each endpoint always sends from the same socket, as a device keeps its address and port:
        # a node with several workers then sees it on one worker, as it would a real one.
        self.socket_of = [(spec.first + i % spec.endpoints) % k for i in range(self.n)]
        if self.builder is not None:
            self.packets = [self.builder(i, vias[self.socket_of[i]]) for i in range(self.n)]
            return
        devices = population(spec.first + spec.endpoints)
        packets = []
        for i in range(self.n):
            index = spec.first + i % spec.endpoints
            packets.append(sipmsg.register(
                index, devices[index], seq=self.base + i, cseq=spec.cseq_base + i // spec.endpoints,
                via=vias[self.socket_of[i]], contact=spec.contact, expires=spec.expires))
        self.packets = packets

    def send(self, i: int) -> None:
        self.sent_ns[i] = time.perf_counter_ns()
        self.transports[self.socket_of[i]].sendto(self.packets[i], self.spec.target)
        self.outstanding += 1

    def fill(self) -> None:
        window = self.spec.window
        while self.outstanding < window and self.next < self.n:
            self.send(self.next)
            self.next += 1

    def on_response(self, data: bytes) -> None:
        key = self.classify(data)
        result = self.result
        if key is None:
            result.stray += 1
            return
        seq, status = key
        i = seq - self.base
        if not 0 <= i < self.n:
            result.stray += 1
            return
        if status < 200:  # provisional: the transaction is alive, not done
            return
        state = self.status[i]
        if state == _LOST:
            result.late += 1
            return
        if state:
            result.duplicates += 1
            return
        now = time.perf_counter_ns()
        self.status[i] = status
        self.lat_ns[i] = now - self.sent_ns[i]
        if self.kept is not None:
            self.kept[i] = data
        self.last_ns = now
        if status < 300:
            result.ok += 1
        else:
            result.failed[status] += 1
        self.outstanding -= 1
        if self.spec.rate == 0:
            self.fill()
        if self.next == self.n and self.outstanding == 0:
            self.finish()

    def sweep(self) -> None:
        cutoff = time.perf_counter_ns() - int(self.spec.timeout * 1e9)
        status, sent = self.status, self.sent_ns
        while self.oldest < self.next and (status[self.oldest] or sent[self.oldest] < cutoff):
            if status[self.oldest] == _PENDING:
                status[self.oldest] = _LOST
                self.result.lost += 1
                self.outstanding -= 1
            self.oldest += 1
        if self.spec.rate == 0:
            self.fill()
        if self.next == self.n and self.outstanding == 0:
            self.finish()

    def finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def go(self) -> LoadResult:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        spec = self.spec
        t0 = time.perf_counter_ns()
        self.result.started_ns = t0
        self.last_ns = t0
        handles = []

        def sweeper() -> None:
            self.sweep()
            handles.append(loop.call_later(_SWEEP, sweeper))

        def ticker() -> None:
            due = min(self.n, int((time.perf_counter_ns() - t0) * spec.rate / 1e9) + 1)
            while self.next < due:
                self.send(self.next)
                self.next += 1
            if self.next < self.n:
                handles.append(loop.call_later(_TICK, ticker))

        if spec.rate > 0:
            ticker()
        else:
            self.fill()
        sweeper()
        handles.append(loop.call_later(spec.deadline, self.finish))
        if self.n == 0:
            self.finish()
        await self.done
        for h in handles:
            h.cancel()
        result = self.result
        result.sent = self.next
        result.lost += sum(1 for i in range(self.oldest, self.next) if self.status[i] == _PENDING)
        result.ended_ns = self.last_ns
        result.latencies_ns = array("q", (self.lat_ns[i] for i in range(self.n) if self.status[i] >= 100))
        result.responses = self.kept
        return result


def _enlarge(sock: socket.socket) -> None:
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
            break
        except OSError:  # FORCE needs CAP_NET_ADMIN; plain SO_RCVBUF is capped by rmem_max
            continue
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)


async def _open(run: _Run) -> list[asyncio.DatagramTransport]:
    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(max(1, run.spec.sockets)):
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(run), local_addr=(run.spec.host, 0))
        _enlarge(transport.get_extra_info("socket"))
        transports.append(transport)
    return transports


async def _drive(spec: LoadSpec, seq_base: int, ready=None, **hooks) -> LoadResult:
    """Bind, pre-build, (wait for the go signal), run. ``ready(...)`` returns the start time in ns."""
    run = _Run(spec, seq_base, **hooks)
    transports = await _open(run)
    try:
        run.build(transports)
        if ready is not None:
            start_ns = ready()
            delay = (start_ns - time.perf_counter_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
        return await run.go()
    finally:
        for t in transports:
            t.close()


def _slices(spec: LoadSpec, procs: int) -> list[tuple[LoadSpec, int]]:
    """Split one spec into ``procs`` contiguous endpoint slices with their share of load."""
    procs = max(1, min(procs, spec.endpoints))
    out = []
    seq = 0
    for k in range(procs):
        a = spec.first + spec.endpoints * k // procs
        b = spec.first + spec.endpoints * (k + 1) // procs
        share = (b - a) / spec.endpoints
        part = replace(
            spec, first=a, endpoints=b - a,
            requests=round(spec.total * share) if spec.requests else 0,
            window=max(1, round(spec.window * share)), rate=spec.rate * share,
        )
        out.append((part, seq))
        seq += part.total
    return out


def _child(conn, spec: LoadSpec, seq_base: int) -> None:
    def ready() -> int:
        conn.send("ready")
        return conn.recv()

    try:
        result = uvloop.run(_drive(spec, seq_base, ready))
        conn.send(result)
    except BaseException as exc:  # report, never hang the parent
        conn.send(RuntimeError(f"load generator process failed: {exc!r}"))
    finally:
        conn.close()


def run_load(spec: LoadSpec, procs: int = 1, *, builder: Builder | None = None,
             classify: Classifier | None = None, keep: bool = False) -> LoadResult:
    """Run ``spec`` to completion (or its deadline) and return what was seen. Blocking.

    ``builder``/``classify`` replace the REGISTER and its matching (the RAS benchmark uses them;
    one process only); ``keep`` keeps each final answer in ``result.responses``.
    """
    if procs <= 1 or builder is not None:
        return uvloop.run(_drive(spec, 0, builder=builder, classify=classify, keep=keep))
    ctx = multiprocessing.get_context("fork")
    children = []
    try:
        for part, seq in _slices(spec, procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child, args=(child, part, seq), daemon=True)
            p.start()
            child.close()
            children.append((p, parent))
        for p, conn in children:
            if not conn.poll(60):
                raise RuntimeError("load generator process did not get ready in 60 s")
            msg = conn.recv()
            if isinstance(msg, Exception):
                raise msg
        start = time.perf_counter_ns() + 20_000_000  # all slices start within the same 20 ms
        for _, conn in children:
            conn.send(start)
        results = []
        for _, conn in children:
            if not conn.poll(spec.deadline + 60):
                raise RuntimeError("load generator process did not report")
            msg = conn.recv()
            if isinstance(msg, Exception):
                raise msg
            results.append(msg)
        return LoadResult.merge(results)
    finally:
        for p, conn in children:
            conn.close()
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()


async def probe(target: tuple[str, int], timeout: float = 0.3) -> bool:
    """True when ``target`` answers an OPTIONS (any status) within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if sipmsg.response_key(data) and not got.done():
                got.set_result(True)

        def error_received(self, exc):
            pass

    transport, _ = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
    try:
        via = transport.get_extra_info("sockname")[:2]
        transport.sendto(sipmsg.options(0, via=via, target=f"{target[0]}:{target[1]}"), target)
        try:
            return await asyncio.wait_for(got, timeout)
        except asyncio.TimeoutError:
            return False
    finally:
        transport.close()


def wait_until_answering(target: tuple[str, int], seconds: float = 15.0, alive=lambda: True) -> None:
    """Block until ``target`` answers OPTIONS; raise after ``seconds`` or once ``alive()`` is false."""

    async def loop() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not alive():
                raise RuntimeError(f"{target[0]}:{target[1]}: process exited before answering")
            if await probe(target):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{target[0]}:{target[1]}: no answer to OPTIONS within {seconds:.0f} s")

    uvloop.run(loop())
