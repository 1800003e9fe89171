"""The chaos world of ``tests.chaos_harness`` with two SIP workers (issue 11, ``meter.workers``).

Core 0 is the owner: its hooks are ``WorkerPool.wrap(SipMetering)``, the pool's ``core`` is core 0
and its ``hooks`` the one metering join. Core 1 is a worker: ``RemoteHooks``, a replica registrar.
The link between them is two FIFO queues of the tuples the real link pickles (each message goes
through ``meter.workers.link.frame`` and back, as on the socket pair); nothing delivers them until
a test says so, so verdicts, replicated bindings and outcomes arrive late, interleaved with the
endpoints' traffic, the timers and retransmissions. No socket, no process, no event loop.

Where a datagram goes, like SO_REUSEPORT and the workers' own ports would send it:
- an endpoint's request whose top Route names a worker's own port goes to that worker; any other
  request, and every request of an endpoint that sends by an outbound proxy (``OUTBOUND_PROXY``:
  always to the shared port), goes to the worker its source address hashes to;
- an endpoint's response goes to the worker its top Via names (its own port);
- what a core sends to the other worker's own port (a sibling relay: an in-dialog request that
  reached the wrong worker follows its Route) reaches that core from the sender's own port, once
  the current action is over; to a port nobody holds any more (a lost worker's), it is lost.

The accounting checks compare the ledger with the metering records always (the owner's metering
is synchronous) and with the union of both cores' tables only when the link is quiet: a call or a
binding whose message is still on the link is legitimately on one side only.
"""

from __future__ import annotations

import itertools
import pickle
import zlib
from collections import deque

from meter.codecs.sip import Request, parse, parse_name_addr
from meter.sip.core import SipCore
from meter.sip.peer import Peer
from meter.sip.routing import Advertised
from meter.workers.link import _LENGTH, frame
from meter.workers.pool import WorkerPool, _Worker
from meter.workers.remote import RemoteHooks
from tests.chaos_harness import _ZONES, World

HOST = "10.0.0.1"
SHARED_PORT = 5060
OWNER_PORT = 5070        # worker 0's own port
FIRST_WORKER_PORT = 5071  # worker 1's; a restarted worker 1 gets the next one (a new ephemeral port)
# These endpoints send every request to the node's shared port (a UA with an outbound proxy, as in
# tests/integration/test_sip_workers.py): their in-dialog requests may reach the other worker.
OUTBOUND_PROXY = ("bob", "carol", "gw")
OWNER, WORKER = "owner", "worker"  # the two directions of the link, by who receives


def shard(peer: Peer) -> int:
    """SO_REUSEPORT: the kernel hashes the source to one socket of the group, the same one every time
    (alice, dave and gw land on worker 1, bob and carol on worker 0)."""
    return zlib.crc32(f"{peer.host}:{peer.port}".encode()) % 2


class LinkWriter:
    """The owner's end of worker 1's link: each frame is decoded and queued for the worker."""

    def __init__(self, queue: deque) -> None:
        self.queue = queue
        self.closed = False

    def write(self, data: bytes) -> None:
        (size,) = _LENGTH.unpack(data[:_LENGTH.size])
        assert size == len(data) - _LENGTH.size, "one frame per write"
        if not self.closed:
            self.queue.append(pickle.loads(data[_LENGTH.size:]))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class WorkersWorld(World):
    def __init__(self, **kw) -> None:
        self.links: dict[str, deque] = {OWNER: deque(), WORKER: deque()}
        self.relays: deque = deque()  # (data, receiving core, source): sibling datagrams in flight
        self._ports = itertools.count(FIRST_WORKER_PORT)
        self._incarnations = itertools.count(1)
        self.worker_losses = 0
        self.cores: dict[int, SipCore] = {}
        super().__init__(**kw)
        assert {shard(e.peer) for e in self.endpoints} == {0, 1}, "both workers serve endpoints"

    # -- the node: owner and worker ------------------------------------------------------------------

    def boot(self, *, fresh_ledger: bool) -> None:
        self._boot_metering(fresh_ledger)
        self.pool = WorkerPool(None, self.policy, 2)
        self.pool.shared_port = SHARED_PORT
        self.links[OWNER].clear()
        self.relays.clear()
        self._owner_incarnation = next(self._incarnations)
        self.core = SipCore(self.settings, clock=self.clock, send=self._sender(0, self._owner_incarnation),
                            advertised=Advertised(HOST, OWNER_PORT), hooks=self.pool.wrap(self.policy),
                            local_names=[f"{HOST}:{SHARED_PORT}", f"{HOST}:{OWNER_PORT}"])
        self.pool.core = self.core
        self.core.start()
        self.cores = {0: self.core}
        self.own_ports = {0: OWNER_PORT}
        self._start_worker()
        self.boots += 1

    def _start_worker(self) -> None:
        """What ``WorkerPool._spawn`` does once the worker said hello: a new link, every worker's own
        address announced, the replica filled from the owner's location (all of it queued)."""
        self.links[WORKER].clear()
        port = next(self._ports)
        incarnation = self._worker_incarnation = next(self._incarnations)
        link = _Worker(1)
        link.own_port = port
        link.writer = LinkWriter(self.links[WORKER])
        self.hooks = RemoteHooks(lambda message: self._to_owner(incarnation, message), _ZONES,
                                 inline=self.settings.mode == "inline", clock=self.clock.time,
                                 settled=64 * self.settings.t1)
        core = SipCore(self.settings, clock=self.clock, send=self._sender(1, incarnation),
                       advertised=Advertised(HOST, port), hooks=self.hooks,
                       local_names=[f"{HOST}:{SHARED_PORT}", f"{HOST}:{port}"])
        core.start()
        self.hooks.location = core.location
        core.registrar.replica = True  # meter.workers.worker: bindings expire in the owner
        # meter.workers.worker: a REGISTER's 200 that adds a contact waits for the owner's ack
        core.registrar.answer_through(
            lambda reply: self.hooks.hold_register_answers(reply, lambda fn, *a: self.clock.call_later(0, fn, *a)))
        self.cores[1], self.own_ports[1] = core, port
        self.pool.workers[1] = link
        self.pool._announce()
        self.pool._sync_all(link)
        link.ready = True
        # The worker serves only once it has every binding (meter.workers.worker's gate).
        queue = self.links[WORKER]
        while queue:
            self.hooks.apply(queue.popleft())

    @property
    def worker(self) -> SipCore:
        return self.cores[1]

    def _to_owner(self, incarnation: int, message: tuple) -> None:
        if incarnation == self._worker_incarnation:  # a lost worker says nothing more
            self.links[OWNER].append(pickle.loads(pickle.dumps(message)))

    def lose_worker(self, written: int | None = None) -> None:
        """Worker 1 dies (SIGKILL): the owner reads what it had written (``written`` of the queued
        messages reached the socket; the rest died in its buffer), ends its calls and releases its
        reservations (``WorkerPool._lost``), and a fresh worker 1 with a new own port starts."""
        queue = self.links[OWNER]
        keep = len(queue) if written is None else min(written, len(queue))
        for _ in range(len(queue) - keep):
            queue.pop()
        old = self.worker
        self._worker_incarnation = next(self._incarnations)  # silence the dead core for good
        old.close("worker killed")  # only to stop its timers: nothing it does now reaches anyone
        link = self.pool.workers[1]
        while queue:  # WorkerPool._serve handles every frame before it sees the end of the link
            self.pool._handle(link, queue.popleft())
        link.writer.close()
        self.links[WORKER].clear()
        # WorkerPool._lost schedules the restart on the running loop; there is none here, so it runs
        # as if closing (the releases, no restart task) and the restart is done by hand below.
        self.pool._closing = True
        try:
            self.pool._lost(link)
        finally:
            self.pool._closing = False
        self.worker_losses += 1
        self._start_worker()
        self._after()

    def shutdown(self) -> list[str]:
        """``Node.close``: the pool stops the worker (it ends its calls through the owner as it
        stops), then the owner's core closes, then metering. ``WorkerPool.close`` writes "stop";
        the worker applies what came before it, closes its core, refuses what it still waits for."""
        self.pool._closing = True
        link = self.pool.workers[1]
        link.writer.write(frame(("stop",)))
        self._deliver_to_owner()  # the owner answers what the worker asked before it read "stop"
        queue = self.links[WORKER]
        while queue and self.hooks.apply(queue.popleft()):
            pass
        queue.clear()
        self.worker.close("node shutdown")
        self.hooks.owner_gone()
        self._deliver_to_owner()
        link.writer.close()
        self._worker_incarnation = next(self._incarnations)
        self.pool._lost(link)  # closing: the releases only (WorkerPool._serve's finally)
        self.core.close("node shutdown")
        self._owner_incarnation = next(self._incarnations)
        left = self._held_charges()
        self.metering.close()
        return left

    # -- the link ------------------------------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        return not self.links[OWNER] and not self.links[WORKER] and not self.relays

    def deliver_link(self, to: str, count: int = 1) -> None:
        """The next ``count`` messages one way (owner: the worker's questions and outcomes;
        worker: verdicts, replicas, sibling lists)."""
        for _ in range(count):
            if not self.links[to]:
                break
            message = self.links[to].popleft()
            if to == OWNER:
                self.pool._handle(self.pool.workers[1], message)
            else:
                self.hooks.apply(message)
        self._after()

    def _deliver_to_owner(self) -> None:
        queue, link = self.links[OWNER], self.pool.workers[1]
        while queue:
            self.pool._handle(link, queue.popleft())

    def settle(self) -> None:
        """Everything on the link delivered, both ways, until nothing more is said."""
        while self.links[OWNER] or self.links[WORKER] or self.relays:
            for to in (OWNER, WORKER):
                while self.links[to]:
                    self.deliver_link(to, len(self.links[to]))
            self._relay()
        self._after()

    # -- the network ---------------------------------------------------------------------------------

    def _to_node(self, data: bytes, source: Peer) -> None:
        index = self._worker_for(data, source)
        if index is not None:
            self.cores[index].receive_datagram(data, source)

    def _worker_for(self, data: bytes, source: Peer) -> int | None:
        msg = parse(data)
        if isinstance(msg, Request):
            endpoint = self._by_address.get((source.host, source.port))
            if msg.has_header("route") and (endpoint is None or endpoint.name not in OUTBOUND_PROXY):
                uri = parse_name_addr(msg.header("route")).uri
                if uri.host == HOST and uri.port not in (None, SHARED_PORT):
                    return self._owner_of_port(uri.port)
            return shard(source)
        via = msg.top_via
        return self._owner_of_port(via.port) if via.host == HOST else None

    def _owner_of_port(self, port: int) -> int | None:
        """The worker listening on ``port`` (None: a lost worker's port, nobody)."""
        return next((i for i, p in self.own_ports.items() if p == port), None)

    def _sender(self, index: int, incarnation: int):
        def send(data: bytes, peer: Peer) -> None:
            if incarnation not in (self._owner_incarnation, self._worker_incarnation):
                return  # a core that is gone sends nothing
            if peer.host == HOST:
                target = self._owner_of_port(peer.port)
                if target is not None and target != index:
                    self.relays.append((data, target, Peer("udp", HOST, self.own_ports[index])))
                return
            self._node_sent(data, peer)
        return send

    def _relay(self) -> None:
        while self.relays:
            data, target, source = self.relays.popleft()
            self.cores[target].receive_datagram(data, source)

    def _after(self) -> None:
        self._relay()
        super()._after()

    # -- the checks ------------------------------------------------------------------------------------

    def node_problems(self) -> list[str]:
        """Only when the link is quiet: the union of both cores' calls is what is metered (a call
        passing both is one call), the owner's location is what is metered, and worker 1's replica
        holds every live binding the owner holds (R9: one license per alias whichever worker took it)."""
        problems = []
        for index, core in self.cores.items():
            c = core.counters
            if c.internal_errors or c.hook_errors or core.txns.errors:
                problems.append(f"core {index} errors: internal {c.internal_errors}, policy {c.hook_errors}, "
                                f"timers {core.txns.errors}")
        if self.pool.hook_errors:
            problems.append(f"owner: {self.pool.hook_errors} errors answering the worker")
        if not self.quiet:
            return problems
        m = self.metering
        node_calls = {c.call_id for core in self.cores.values() for c in core.dialogs}
        metered_calls = {cid for (_, cid) in m.calls}
        if node_calls != metered_calls:
            where = {i: sorted(c.call_id for c in core.dialogs) for i, core in self.cores.items()}
            problems.append(f"calls on the workers {where} != calls metered {sorted(metered_calls)}")
        owner_aors = {b.aor for b in self.core.location.bindings()}
        metered_aors = {alias for (_, alias) in m.registrations}
        if owner_aors != metered_aors:
            problems.append(f"aliases bound in the owner {sorted(owner_aors)} != "
                            f"aliases metered {sorted(metered_aors)}")
        now = self.clock.time()
        owner, replica = _live(self.core, now), _live(self.worker, now)
        if owner != replica:
            problems.append(f"worker 1's replica {sorted(replica)} != the owner's bindings {sorted(owner)}")
        return problems

    def drain(self) -> list[str]:
        """Everyone goes silent, held messages are lost, the link delivers everything and time runs
        past every timer (twice: a verdict delivered late starts transactions of its own)."""
        self.held.clear()
        for _ in range(3):
            self.settle()
            self.clock.advance(self.drain_seconds)
            self.metering.tick(self.clock.time())
        self.settle()
        problems = self.accounting_problems()
        problems += self._held_charges()
        m = self.metering
        if m.calls or m.registrations:
            problems.append(f"metering records left: calls {sorted(m.calls)}, registrations {sorted(m.registrations)}")
        for index, core in self.cores.items():
            if len(core.dialogs) or len(core.location):
                problems.append(f"core {index} tables left: calls {[c.call_id for c in core.dialogs]}, "
                                f"bindings {[b.aor for b in core.location.bindings()]}")
            txns = core.txns
            if txns.servers or txns.clients:
                problems.append(f"core {index} transactions left: "
                                f"{list(txns.servers.values()) + list(txns.clients.values())}")
        if self.pool.workers[1].calls or self.pool.workers[1].reservations:
            link = self.pool.workers[1]
            problems.append(f"the owner still holds worker 1's calls {sorted(link.calls)}, "
                            f"reservations {dict(link.reservations)}")
        return problems

    # -- small queries for tests -----------------------------------------------------------------------

    def worker_of(self, name: str) -> int:
        return shard(self.endpoint(name).peer)


def _live(core: SipCore, now: float) -> set[tuple]:
    return {(b.aor, b.contact, b.expires_at, b.call_id, b.cseq) for b in core.location.bindings() if b.expires_at > now}
