"""The owner's side of the workers: starts them, answers their questions with the node's one
metering join, keeps every location in step, and ends what a lost worker leaves behind.
See ``meter.workers`` for the design."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import sys
from collections import Counter, defaultdict

from meter.hooks import HookCaller
from meter.logs import log_event
from meter.sip.hooks import ALLOW, HOOK_FAILED, BindingInfo, Verdict
from meter.workers.link import FrameProtocol, frame
from meter.workers.remote import binding_signature
from meter.workers.stats import WorkerStats

log = logging.getLogger("meter.workers")

# A lost worker is started again after this long: soon enough that its share of the sources is
# served again within seconds, slow enough that a worker that cannot start does not spin.
RESTART_DELAY_SECONDS = 1.0
# How long a stopping worker gets to end its calls through the owner before it is killed.
STOP_TIMEOUT_SECONDS = 5.0


class WorkerStartError(Exception):
    """A SIP worker process that did not come up: the node does not start without it."""


class ReplicatingHooks:
    """Worker 0's hooks: the node's metering join, and each change of worker 0's bindings (its own
    REGISTERs and the owner's expiries) sent to the other workers."""

    def __init__(self, hooks, pool: "WorkerPool") -> None:
        self._hooks, self._pool = hooks, pool
        self.on_invite = pool.invite_verdict
        self.on_call_ended = pool.call_ended
        for name in ("on_register", "on_register_failed", "on_call_answered", "on_call_confirmed",
                     "trusted_source", "zone_closed", "route"):
            setattr(self, name, getattr(hooks, name))

    def on_bindings(self, aor, bindings, user_agent, source, now) -> None:
        self._hooks.on_bindings(aor, bindings, user_agent, source, now)
        self._pool.replicate(aor, origin=0)

    def zone_destination(self, host: str, port: int) -> bool:
        # As in every worker (meter.workers.remote): in-dialog requests may go on to a sibling.
        return (host, port) in self._pool.siblings or self._hooks.zone_destination(host, port)


class _Worker:
    __slots__ = ("index", "process", "writer", "hello", "gone", "own_port", "ready", "calls", "reservations",
                 "replicas_sent", "replica_at", "stats")

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.Transport | None = None  # the link's transport: write() and is_closing()
        self.hello: asyncio.Future | None = None  # its own port, once it serves
        self.gone: asyncio.Future | None = None  # set when the link closed and what it left is released
        self.own_port = 0
        self.ready = False  # it has every binding: changes are sent to it from now on
        # Call-ID -> its passes allowed here and not ended (a call may pass twice, see invite_verdict):
        # ended by the owner if the worker is lost.
        self.calls: Counter[str] = Counter()
        # AOR -> {Call-ID: (forwarded, source)} of REGISTERs allowed and not yet settled by the worker's
        # "bindings" (standalone: charged at the ask; inline: reserved until the upstream's 2xx)
        self.reservations: dict[str, dict[str, tuple[bool, object]]] = defaultdict(dict)  # (forwarded, source)
        # Replicas are numbered per worker; an AOR's last number is kept until the worker's own
        # change of it shows it had applied that replica (see _settle).
        self.replicas_sent = 0
        self.replica_at: dict[str, int] = {}
        self.stats = WorkerStats()


class WorkerPool:
    """Workers 1..count-1 of a node whose process is worker 0 (``core``: its SIP core)."""

    def __init__(self, config, hooks, count: int) -> None:
        self.config = config
        self.hooks = hooks  # the node's SipMetering: the one ledger
        self.count = count
        self.core = None  # worker 0's SipCore, set once it is started
        self.shared_port = 0
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._guard = HookCaller(log, self, "workers.hook_error")
        self.hook_errors = 0
        self._closing = False
        self._tasks: set[asyncio.Task] = set()
        self.siblings: frozenset[tuple[str, int]] = frozenset()  # (host, own port) of every worker
        self._passes: dict[str, int] = {}  # Call-ID -> passes allowed and not ended, when more than one
        self._replicated: dict[str, tuple] = {}  # AOR -> signature of the bindings last sent whole

    def wrap(self, hooks) -> ReplicatingHooks:
        return ReplicatingHooks(hooks, self)

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self, core, shared_port: int) -> None:
        self.core, self.shared_port = core, shared_port
        for index in range(1, self.count):
            await self._spawn(index)
        log_event(log, "workers.started", workers=self.count, port=shared_port,
                  own_ports=[core.advertised.port] + [w.own_port for w in self.workers.values()])

    async def _spawn(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        worker = self.workers[index] = _Worker(index)
        worker.hello, worker.gone = loop.create_future(), loop.create_future()
        parent, child = socket.socketpair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meter.workers.worker", str(child.fileno()), pass_fds=(child.fileno(),))
        finally:
            child.close()
        worker.writer, _ = await loop.create_connection(
            lambda: FrameProtocol(lambda message: self._received(worker, message), lambda: self._closed(worker)),
            sock=parent)
        config = self.config
        worker.writer.write(frame(("config", dict(config.sections), config.source, index, self.shared_port)))
        await asyncio.wait([worker.hello, worker.gone], return_when=asyncio.FIRST_COMPLETED)
        if not worker.hello.done():
            status = await worker.process.wait()
            raise WorkerStartError(f"[sip] workers: SIP worker {index} did not start (exit status {status}): "
                                   "see its log lines above")
        worker.own_port = worker.hello.result()
        self._announce()
        self._sync_all(worker)
        worker.writer.write(frame(("synced",)))  # it serves from now on, knowing every binding
        worker.ready = True

    def _announce(self) -> None:
        """Every worker's own address, to every worker (a restarted one has a new port)."""
        host = self.core.advertised.host
        self.siblings = frozenset([(host, self.core.advertised.port)] +
                                  [(host, w.own_port) for w in self.workers.values() if w.own_port])
        data = frame(("siblings", self.siblings))
        for worker in self.workers.values():
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(data)

    def _sync_all(self, worker: _Worker) -> None:
        """A new worker learns every binding the node holds before it serves."""
        location = self.core.location
        for aor in {b.aor for b in location.bindings()}:
            self._send_replica(worker, aor, location.bindings_of(aor))

    async def close(self) -> None:
        """Stop every worker; their calls end through the owner as they stop (node shutdown)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for worker in self.workers.values():
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(frame(("stop",)))
        for worker in list(self.workers.values()):
            await self._wait_stopped(worker)
        log_event(log, "workers.stopped", workers=self.count)

    async def _wait_stopped(self, worker: _Worker) -> None:
        if worker.process is not None:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT_SECONDS)
            except asyncio.TimeoutError:
                log_event(log, "workers.kill", logging.WARNING, worker=worker.index)
                worker.process.kill()
                await worker.process.wait()
        if worker.gone is not None:
            await worker.gone  # everything it said before it stopped is handled

    # -- one worker's messages ---------------------------------------------------------------------

    def _received(self, worker: _Worker, message: tuple) -> None:
        try:
            self._handle(worker, message)
        except Exception:  # a bug here must not leave the worker unanswered for good
            log.exception("workers.message_failed", extra={"facts": {"worker": worker.index, "kind": message[0]}})

    def _closed(self, worker: _Worker) -> None:
        self._lost(worker)
        if worker.gone is not None and not worker.gone.done():
            worker.gone.set_result(None)

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        hooks = self.hooks
        if kind == "hello":
            if worker.hello is not None and not worker.hello.done():
                worker.hello.set_result(message[1])
        elif kind == "ask":
            _, question, rid, info = message
            if question == "register":
                verdict = self._guard.ask(hooks.on_register, info, on_error=HOOK_FAILED, expect=Verdict)
                if verdict.allowed:
                    worker.reservations[info.aor][info.call_id] = (info.forwarded, info.source)
            else:
                info = self._in_order(worker, info)
                verdict = self._guard.ask(self.invite_verdict, info, on_error=HOOK_FAILED, expect=Verdict)
                if verdict.allowed:
                    worker.calls[info.call_id] += 1
            worker.writer.write(frame(("verdict", rid, verdict)))
        elif kind == "bindings":
            _, aor, whole, infos, user_agent, source, now, seen, ack = message
            worker.reservations.pop(aor, None)
            self.core.location.replace(aor, whole)
            if now is None:  # re-sent after a mismatch: what the bindings are now
                self._bindings_changed(aor, user_agent, source, None)
            else:
                self._guard.notify(hooks.on_bindings, aor, infos, user_agent, source, now)
            self.replicate(aor, origin=worker.index)
            self._settle(worker, aor, seen)
            if ack is not None:  # every other worker has been sent them: the phone may be told
                worker.writer.write(frame(("ack", ack)))
        elif kind == "refresh":
            _, aor, updates, user_agent, source, now, seen = message
            worker.reservations.pop(aor, None)
            location = self.core.location
            if not location.refresh(aor, updates):  # another worker changed it meanwhile
                worker.writer.write(frame(("resend", aor)))
                return
            self._bindings_changed(aor, user_agent, source, now)
            self._send_others(frame(("refreshed", aor, updates)), worker.index)
            self._settle(worker, aor, seen)
        elif kind == "want":
            self._send_replica(worker, message[1], self.core.location.bindings_of(message[1]))
        elif kind == "register_failed":
            _, aor, call_id, cause = message
            calls = worker.reservations.get(aor)
            if calls is not None:
                calls.pop(call_id, None)
            self._guard.notify(hooks.on_register_failed, aor, call_id, cause)
        elif kind == "answered":
            self._guard.notify(hooks.on_call_answered, *message[1:])
        elif kind == "confirmed":
            self._guard.notify(hooks.on_call_confirmed, message[1])
        elif kind == "ended":
            call_id = message[1]
            if worker.calls[call_id] > 1:
                worker.calls[call_id] -= 1
            else:
                worker.calls.pop(call_id, None)
            self._guard.notify(self.call_ended, call_id, message[2])
        elif kind == "stats":
            worker.stats.update(*message[1:])
        else:
            log_event(log, "workers.unknown_message", logging.WARNING, worker=worker.index, kind=str(kind))

    def _in_order(self, worker: _Worker, info):
        """A caller that sends its INVITE right after its REGISTER (baresip dialling at start) may
        reach the worker before that REGISTER's verdict came back, so the worker did not see it
        registered. One process handles them in order: the REGISTER first. Here the same is true
        of the questions: a standalone REGISTER of the caller's alias from the same flow, allowed
        and not yet settled, makes it registered (the distinction C1 vs C2/C3 rests on)."""
        if info.caller_registered:
            return info
        pending = worker.reservations.get(info.from_aor)
        if pending and any(not forwarded and source == info.source for forwarded, source in pending.values()):
            return dataclasses.replace(info, caller_registered=True)
        return info

    def invite_verdict(self, info) -> Verdict:
        """One call, one charge: a call that passes the node twice (inline: endpoint -> node -> lab
        registrar -> node -> endpoint) is a spiral that one process recognises by its dialog; here
        the second pass may reach another worker, so a Call-ID already charged is let through
        uncharged (the ledger keys calls by Call-ID; the first pass's facts decide, as they would);
        the charge lasts until the last pass ends (``call_ended``)."""
        if ("sip", info.call_id) in self.hooks.m.calls:
            self._passes[info.call_id] = self._passes.get(info.call_id, 1) + 1
            return ALLOW
        return self.hooks.on_invite(info)

    def call_ended(self, call_id: str, cause: str) -> None:
        """One pass of a call ended (any worker's ``on_call_ended``): released at the last one. The
        first pass may end first: a worker lost, or a late duplicate INVITE asked again while the
        first verdict was on the link and the first INVITE got cancelled meanwhile."""
        passes = self._passes.pop(call_id, 1)
        if passes > 1:
            self._passes[call_id] = passes - 1
            return
        self.hooks.on_call_ended(call_id, cause)

    def _bindings_changed(self, aor: str, user_agent: str, source, now: float | None) -> None:
        """The metering hears of ``aor``'s bindings as the owner's location now holds them."""
        clock = self.core.clock
        mono = clock.time()
        infos = tuple(BindingInfo(b.contact, b.remaining(mono), b.source, b.user_agent)
                      for b in self.core.location.lookup(aor, mono))
        self._guard.notify(self.hooks.on_bindings, aor, infos, user_agent, source, clock.wall() if now is None else now)

    def replicate(self, aor: str, *, origin: int) -> None:
        """``aor``'s bindings as the owner now holds them, to every worker but the one they came
        from: a refresh as new expiries only, any other change as the whole set."""
        if not self.workers:
            return
        whole = self.core.location.bindings_of(aor)
        signature = binding_signature(whole)
        if whole and self._replicated.get(aor) == signature:
            updates = tuple((b.key, b.expires_at, b.cseq, b.call_id) for b in whole)
            self._send_others(frame(("refreshed", aor, updates)), origin)
            return
        if whole:
            self._replicated[aor] = signature
        else:
            self._replicated.pop(aor, None)
        self._send_others(None, origin, aor, whole)

    def _send_others(self, data: bytes | None, origin: int, aor: str = "", bindings=None) -> None:
        """``data`` to every ready worker but ``origin``; a whole set (``bindings``) numbered per worker."""
        for worker in self.workers.values():
            if worker.index != origin and worker.ready and not worker.writer.is_closing():
                if bindings is None:
                    worker.writer.write(data)
                else:
                    self._send_replica(worker, aor, bindings)

    @staticmethod
    def _send_replica(worker: _Worker, aor: str, bindings: list) -> None:
        if worker.writer is None or worker.writer.is_closing():
            return
        worker.replicas_sent += 1
        worker.replica_at[aor] = worker.replicas_sent
        worker.writer.write(frame(("replica", aor, bindings, worker.replicas_sent)))

    def _settle(self, worker: _Worker, aor: str, seen: int) -> None:
        """A worker's change of ``aor`` made before it applied the owner's last replica of it (the
        owner's expiry, another worker's change): that replica reaches it after its own change and
        would undo it there. The owner's set now, sent after it, puts the worker right."""
        if worker.replica_at.get(aor, 0) > seen:
            self._send_replica(worker, aor, self.core.location.bindings_of(aor))
        else:
            worker.replica_at.pop(aor, None)

    # -- a worker lost -----------------------------------------------------------------------------

    def _lost(self, worker: _Worker) -> None:
        """Its dialogs and REGISTERs in flight died with it: nothing may stay charged for them."""
        hooks = self.hooks
        for call_id, passes in sorted(worker.calls.items()):
            for _ in range(passes):
                self._guard.notify(self.call_ended, call_id, "worker lost")
        now = self.core.clock.time()
        for aor, call_ids in sorted(worker.reservations.items()):
            for call_id, (forwarded, _) in sorted(call_ids.items()):
                if forwarded:  # inline: the reservation waited for the upstream's 2xx
                    self._guard.notify(hooks.on_register_failed, aor, call_id, "worker lost")
            if not any(forwarded for forwarded, _ in call_ids.values()) and not self.core.location.lookup(aor, now):
                # standalone: charged at the ask, its binding never made: the charge follows the bindings
                self._guard.notify(hooks.on_bindings, aor, (), "", None, self.core.clock.wall())
        ended, released = sum(worker.calls.values()), sum(len(c) for c in worker.reservations.values())
        worker.calls.clear()
        worker.reservations.clear()
        worker.stats.retire()
        if self._closing:
            return
        log_event(log, "workers.lost", logging.ERROR, worker=worker.index, calls_ended=ended,
                  reservations_released=released)
        task = asyncio.get_running_loop().create_task(self._restart(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, worker: _Worker) -> None:
        if worker.process is not None:
            await worker.process.wait()
        await asyncio.sleep(RESTART_DELAY_SECONDS)
        if self._closing:
            return
        old_stats = worker.stats
        try:
            await self._spawn(worker.index)
        except Exception as exc:
            log_event(log, "workers.restart_failed", logging.ERROR, worker=worker.index, error=str(exc))
            return
        self.workers[worker.index].stats.carry(old_stats)  # counters never go backwards
        self.restarts += 1
        log_event(log, "workers.restarted", worker=worker.index, own_port=self.workers[worker.index].own_port)

    # -- views -------------------------------------------------------------------------------------

    def calls(self) -> list[dict]:
        return [view for worker in self.workers.values() for view in worker.stats.calls]

    def alive(self) -> int:
        """Workers serving now, worker 0 included."""
        return 1 + sum(1 for w in self.workers.values() if w.writer is not None and not w.writer.is_closing())

    def indexed_snapshots(self) -> list[tuple[int, WorkerStats]]:
        return sorted((index, worker.stats) for index, worker in self.workers.items())

    def counter_snapshots(self) -> list[dict]:
        return [worker.stats.counters for worker in self.workers.values()]

    def snapshots(self) -> list[WorkerStats]:
        return [worker.stats for worker in self.workers.values()]
