"""The owner's side of the workers: starts them, answers their questions with the node's one
metering join, keeps every location in step, and ends what a lost worker leaves behind.
See ``meter.workers`` for the design."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections import Counter, defaultdict

from meter.hooks import HookCaller
from meter.logs import log_event
from meter.sip.hooks import ALLOW, HOOK_FAILED, Verdict
from meter.workers.link import frame, frames
from meter.workers.stats import WorkerStats

log = logging.getLogger("meter.workers")

# A lost worker is started again after this long: soon enough that its share of the sources is
# served again within seconds, slow enough that a worker that cannot start does not spin.
RESTART_DELAY_SECONDS = 1.0
# How long a stopping worker gets to end its calls through the owner before it is killed.
STOP_TIMEOUT_SECONDS = 5.0


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
    __slots__ = ("index", "process", "writer", "reader_task", "own_port", "calls", "reservations", "registering",
                 "replicas_sent", "replica_at", "stats")

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task | None = None
        self.own_port = 0
        # Call-ID -> its passes allowed here and not ended (two: a second ask, see invite_verdict):
        # ended by the owner if the worker is lost.
        self.calls: Counter[str] = Counter()
        self.reservations: dict[str, set[str]] = defaultdict(set)  # AOR -> Call-IDs of inline REGISTERs in flight
        # AOR -> Call-IDs of standalone REGISTERs allowed (so charged: SipMetering.on_register) whose
        # bindings the worker has not sent yet: if it dies first, the charge has no binding behind it.
        self.registering: dict[str, set[str]] = defaultdict(set)
        # Replicas are numbered per worker; an AOR's last number is kept until the worker's own
        # bindings of it show it had applied that replica (see WorkerPool._handle "bindings").
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
        # Call-ID -> passes allowed and not ended, when more than one (see invite_verdict).
        self._passes: dict[str, int] = {}

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
        worker = self.workers[index] = _Worker(index)
        parent, child = socket.socketpair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meter.workers.worker", str(child.fileno()), pass_fds=(child.fileno(),))
        finally:
            child.close()
        reader, worker.writer = await asyncio.open_connection(sock=parent)
        config = self.config
        worker.writer.write(frame(("config", dict(config.sections), config.source, index, self.shared_port)))
        hello = await _first(reader)
        if hello is None or hello[0] != "hello":
            raise RuntimeError(f"SIP worker {index} did not start (exit status {worker.process.returncode}): "
                               "see its log lines above")
        worker.own_port = hello[1]
        self._announce()
        self._sync_all(worker)
        worker.reader_task = asyncio.get_running_loop().create_task(self._serve(worker, reader),
                                                                    name=f"sip-worker-{index}")

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
        if worker.reader_task is not None:
            await worker.reader_task  # everything it said before it stopped is handled

    # -- one worker's messages ---------------------------------------------------------------------

    async def _serve(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            async for message in frames(reader):
                try:
                    self._handle(worker, message)
                except Exception:  # a bug here must not leave the worker unanswered for good
                    log.exception("workers.message_failed", extra={"facts": {"worker": worker.index,
                                                                             "kind": message[0]}})
        finally:
            worker.writer.close()
            self._lost(worker)

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        hooks = self.hooks
        if kind == "ask":
            _, question, rid, info = message
            if question == "register":
                verdict = self._guard.ask(hooks.on_register, info, on_error=HOOK_FAILED, expect=Verdict)
                if verdict.allowed:
                    (worker.reservations if info.forwarded else worker.registering)[info.aor].add(info.call_id)
            else:
                verdict = self._guard.ask(self.invite_verdict, info, on_error=HOOK_FAILED, expect=Verdict)
                if verdict.allowed:
                    worker.calls[info.call_id] += 1
            worker.writer.write(frame(("verdict", rid, verdict)))
        elif kind == "bindings":
            _, aor, whole, infos, user_agent, source, now, seen = message
            worker.reservations.pop(aor, None)
            worker.registering.pop(aor, None)
            self.core.location.replace(aor, whole)
            self._guard.notify(hooks.on_bindings, aor, infos, user_agent, source, now)
            self.replicate(aor, origin=worker.index)
            if worker.replica_at.get(aor, 0) > seen:
                # The owner changed this AOR (its expiry) after the last replica the worker had
                # applied when it wrote these bindings: that replica reaches it after its own
                # change and would undo it. The owner's set now, sent after it, puts it right.
                self._send_replica(worker, aor, self.core.location.bindings_of(aor))
            else:
                worker.replica_at.pop(aor, None)
        elif kind == "register_failed":
            _, aor, call_id, cause = message
            calls = worker.reservations.get(aor)
            if calls is not None:
                calls.discard(call_id)
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
            self._guard.notify(self.call_ended, message[1], message[2])
        elif kind == "stats":
            worker.stats.update(*message[1:])
        else:
            log_event(log, "workers.unknown_message", logging.WARNING, worker=worker.index, kind=str(kind))

    def invite_verdict(self, info) -> Verdict:
        """One call, one charge: a call that passes the node twice (inline: endpoint -> node -> lab
        registrar -> node -> endpoint) is a spiral that one process recognises by its dialog; here
        the second pass may reach another worker, so a Call-ID already charged is let through
        uncharged (the ledger keys calls by Call-ID; the first pass's facts decide, as they would).
        The charge then lasts until the last pass ends (``call_ended``): the first may end first (a
        worker lost, or a second ask while the first verdict was on the link and its INVITE got
        cancelled meanwhile)."""
        if ("sip", info.call_id) in self.hooks.m.calls:
            self._passes[info.call_id] = self._passes.get(info.call_id, 1) + 1
            return ALLOW
        return self.hooks.on_invite(info)

    def call_ended(self, call_id: str, cause: str) -> None:
        """One pass of a call ended (any worker's ``on_call_ended``): released at the last one."""
        passes = self._passes.pop(call_id, 1)
        if passes > 1:
            self._passes[call_id] = passes - 1
            return
        self.hooks.on_call_ended(call_id, cause)

    def replicate(self, aor: str, *, origin: int) -> None:
        """``aor``'s bindings as the owner now holds them, to every worker but the one they came from."""
        if not self.workers:
            return
        bindings = self.core.location.bindings_of(aor)
        for worker in self.workers.values():
            if worker.index != origin:
                self._send_replica(worker, aor, bindings)

    @staticmethod
    def _send_replica(worker: _Worker, aor: str, bindings: list) -> None:
        if worker.writer is None or worker.writer.is_closing():
            return
        worker.replicas_sent += 1
        worker.replica_at[aor] = worker.replicas_sent
        worker.writer.write(frame(("replica", aor, bindings, worker.replicas_sent)))

    # -- a worker lost -----------------------------------------------------------------------------

    def _lost(self, worker: _Worker) -> None:
        """Its dialogs and REGISTERs in flight died with it: nothing may stay charged for them."""
        hooks = self.hooks
        for call_id, passes in sorted(worker.calls.items()):
            for _ in range(passes):
                self._guard.notify(self.call_ended, call_id, "worker lost")
        for aor, call_ids in sorted(worker.reservations.items()):
            for call_id in sorted(call_ids):
                self._guard.notify(hooks.on_register_failed, aor, call_id, "worker lost")
        unbound = [aor for aor in sorted(worker.registering) if not self.core.location.bindings_of(aor)]
        for aor in unbound:  # charged by its verdict, bound nowhere: the charge follows the bindings (none)
            self._guard.notify(hooks.on_bindings, aor, (), "", None, self.core.clock.wall())
        ended = sum(worker.calls.values())
        released = sum(len(c) for c in worker.reservations.values()) + len(unbound)
        worker.calls.clear()
        worker.reservations.clear()
        worker.registering.clear()
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

    def snapshots(self) -> list[WorkerStats]:
        return [worker.stats for worker in self.workers.values()]


async def _first(reader: asyncio.StreamReader):
    async for message in frames(reader):
        return message
    return None
