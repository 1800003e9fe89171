"""Two SIP workers on one port (`[sip] workers = 2`, issue 11 "both cores"), real node process.

30 endpoints, each on its own UDP port, so the kernel spreads them over both workers (SO_REUSEPORT
hashes the 4-tuple; all 30 on one worker has odds of 2^-29). Then, through the node's admin API and
/metrics:
- every registration is charged once (R9), whichever worker took it, and listed once;
- each endpoint calls another registered endpoint's alias: the INVITE reaches the worker of the
  caller, the alias may have registered through the other one, and every call is put through;
- calls to a third-party SIP trunk take one RMS each (C2, C3) in the one ledger and give it back
  at BYE, also when the callee side hangs up by the shared port (the BYE follows its Route to the
  worker holding the dialog);
- the Record-Route of the answers names both workers' own ports (the calls were spread);
- /metrics adds both workers' counters (30 REGISTERs in, whichever worker counted them);
- a worker killed with SIGKILL mid-call: its calls' RMS come back at once (no count stays
  charged for a dialog that died), it is started again, every registration is still there and a
  refresh through it changes nothing;
- the node stops cleanly and leaves no worker process behind.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess

import pytest

from tests.integration.peers import MeterProcess, promtool_check_metrics, wait_until
from meter.codecs.sip import new_tag
from tests.integration.test_metering_calls import ROOM, Callee, call, hang_up
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SDP_ANSWER, SDP_OFFER, SipUA

pytestmark = pytest.mark.integration

ENDPOINTS = 30
TRUNK_CALLS = 6


def in_use(node: MeterProcess) -> dict[str, float]:
    licenses = node.api("licenses")["licenses"]
    return {name: licenses[name]["in_use"] for name in ("room", "desktop", "rms")}


def worker_pids(node: MeterProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(node.proc.pid)], capture_output=True, text=True).stdout
    return sorted(int(pid) for pid in out.split())


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in /metrics")


def record_route_port(response) -> int:
    """The own port of the worker that put the call through (its Record-Route entry)."""
    return int(re.search(r":(\d+)[;>]", response.header_values("record-route")[0]).group(1))


def first_worker_port(node: MeterProcess) -> int:
    """Worker 1's own port, from its start line in the node's log (workers log to the same place)."""
    return int(re.search(r"workers\.worker_started\b.*?own_port\W+(\d+)", node.log_path.read_text()).group(1))


def two_workers(tmp_path, keys: dict[str, int], *, sip: dict | None = None, zones: list | None = None) -> MeterProcess:
    """A started node with two SIP workers, enforcing ``keys``; [limits] off: every UA of these
    tests is behind 127.0.0.1."""
    node = MeterProcess(tmp_path / "node", sip={"workers": 2, "tcp": False, **(sip or {})},
                        licensing={"enforcement": "enforce"}, zones=zones,
                        extra="[limits]\nrequests = 0\nregistrations = 0\n")
    node.install_keys(keys)
    return node.start()


def close_all(node: MeterProcess, *groups) -> None:
    """Every UA, answering endpoint and trunk (anything with close()), then the node."""
    for group in groups:
        for thing in group:
            thing.close()
    node.stop()


class Answering:
    """A registered endpoint that answers each INVITE 200 and keeps its side of the dialog, so it
    can hang up itself; BYEs from the other side get 200."""

    def __init__(self, ua: SipUA):
        self.ua = ua
        self.dialogs = {}  # Call-ID -> the callee side's dialog (RFC 3261 §12.1.1)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._invites()), loop.create_task(self._byes())]

    async def _invites(self):
        while True:
            req = await self.ua.expect(method="INVITE", timeout=3600)
            tag = new_tag()
            self.ua.reply(req, 200, to_tag=tag, body=SDP_ANSWER, content_type="application/sdp", contact=True)
            self.dialogs[req.call_id] = self.ua.dialog_from_request(req, tag)

    async def _byes(self):
        while True:
            req = await self.ua.expect(method="BYE", timeout=3600)
            self.ua.reply(req, 200, record_route=False)

    async def hang_up(self, call_id: str) -> None:
        """The callee hangs up, sending to the node's shared port like a UA with an outbound proxy:
        the BYE may reach the other worker, which follows its Route to the one holding the dialog."""
        bye = self.ua.in_dialog(self.dialogs.pop(call_id), "BYE")
        self.ua.send(bye)
        final = await self.ua.final("BYE", call_id=call_id, timeout=10)
        assert final.status == 200, final

    def close(self):
        for task in self.tasks:
            task.cancel()


def test_two_workers_share_one_ledger_and_one_location(tmp_path):
    async def scenario():
        far = await SipUA.open("itsp", ("127.0.0.1", 9), domain="far.example")
        node = two_workers(tmp_path, {"ROOM": ENDPOINTS + 5, "RMS": 10}, zones=[
            {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
             "target": f"127.0.0.1:{far.port}"}])
        trunk = Callee(far, SDP_ANSWER)
        proxy = ("127.0.0.1", node.sip_port)
        endpoints = [await SipUA.open(f"ep{i:02d}", proxy, domain="lab.test") for i in range(ENDPOINTS)]
        answering = []
        try:
            assert len(worker_pids(node)) == 1, "one worker process beside the node's own"
            for ua in endpoints:
                assert (await register(ua, ROOM, expires=600)).status == 200
            # R9: one room license per alias, whichever worker took the REGISTER; listed once each.
            assert in_use(node) == {"room": ENDPOINTS, "desktop": 0, "rms": 0}
            aliases = sorted(r["alias"] for r in node.api("registrations"))
            assert aliases == sorted(ua.aor for ua in endpoints)

            # Endpoint to endpoint: the caller's worker finds the callee's alias whichever worker took it.
            answering = [Answering(ua) for ua in endpoints]
            worker_of = {}  # endpoint -> the own port of the worker its traffic hashes to
            for i, ua in enumerate(endpoints):
                callee = answering[(i + 7) % ENDPOINTS]
                final, dialog = await call(ua, callee.ua.aor, SDP_OFFER)
                assert final.status == 200, (ua.aor, callee.ua.aor, final)
                worker_of[ua] = record_route_port(final)
                if i % 2:
                    await hang_up(ua, dialog)
                else:
                    await callee.hang_up(dialog.call_id)
            wait_until(lambda: node.api("calls") == [], 5, "every call to end")
            own_ports = set(worker_of.values())
            assert len(own_ports) == 2, f"calls were handled by one worker only: {own_ports}"
            assert node.sip_port not in own_ports  # each worker names its own port, not the shared one

            # C2, C3: a trunk call takes one RMS in the one ledger, whichever worker set it up.
            dialogs = []
            # half the trunk calls through each worker
            callers = [ua for port in sorted(own_ports) for ua in endpoints if worker_of[ua] == port][:TRUNK_CALLS // 2]
            callers += [ua for ua in endpoints if worker_of[ua] != worker_of[callers[0]]][:TRUNK_CALLS // 2]
            for ua in callers:
                final, dialog = await call(ua, f"sip:+4930{len(dialogs):04d}@itsp.example", SDP_OFFER)
                assert final.status == 200, final
                dialogs.append((ua, dialog, record_route_port(final)))
            wait_until(lambda: in_use(node)["rms"] == TRUNK_CALLS, 5, "every trunk call to be charged")
            ua, dialog, _ = dialogs.pop()
            await hang_up(ua, dialog)
            wait_until(lambda: in_use(node)["rms"] == TRUNK_CALLS - 1, 5, "the BYE to release its RMS")

            # One /metrics: both workers' REGISTERs counted (a worker reports within a second).
            wait_until(lambda: metric(node.metrics_text(), 'meter_sip_requests_total{direction="in",method="REGISTER"}')
                       == ENDPOINTS, 5, "the REGISTER count summed over the workers")

            # A worker killed mid-call: the calls it held give their RMS back, it comes back.
            [pid] = worker_pids(node)
            killed_port = first_worker_port(node)
            surviving = [d for d in dialogs if d[2] != killed_port]
            assert 0 < len(surviving) < len(dialogs), "the trunk calls went through one worker only"
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: in_use(node)["rms"] == len(surviving), 5, "the lost worker's calls to be released")
            wait_until(lambda: "workers.restarted" in node.log_path.read_text(), 15, "the worker to be restarted")
            assert len(node.api("calls")) == len(surviving)  # listed exactly as charged
            assert in_use(node)["room"] == ENDPOINTS
            for ua in endpoints:  # every refresh answered, nothing charged twice
                assert (await register(ua, ROOM, expires=600)).status == 200
            assert in_use(node)["room"] == ENDPOINTS
            assert len(node.api("registrations")) == ENDPOINTS
            new_pids = worker_pids(node)
            assert len(new_pids) == 1 and new_pids != [pid]
            # The lost worker's counts are kept (it reported them before it was killed) and the new
            # one's are added: 30 REGISTERs, then 30 refreshes.
            wait_until(lambda: metric(node.metrics_text(), 'meter_sip_requests_total{direction="in",method="REGISTER"}')
                       == 2 * ENDPOINTS, 5, "the REGISTER count to go on from where the lost worker left it")
            text = node.metrics_text()
            assert metric(text, "meter_sip_workers ") == 2 and metric(text, "meter_sip_worker_restarts_total ") == 1
            promtool_check_metrics(text)  # one valid exposition for the whole node
        finally:
            close_all(node, answering, [trunk], endpoints)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in new_pids), "a worker outlived the node"

    asyncio.run(scenario())


def test_two_workers_inline_through_kamailio_charge_each_call_once(tmp_path, kamailio):
    """Inline (issue 11): endpoints register through the node to a real Kamailio, which routes
    calls back along the Path the node added (RFC 3327), naming the worker that took the REGISTER.
    A call passes the node twice (caller -> node -> Kamailio -> node -> callee) and the two passes
    may reach different workers: it is still one call in the ledger (C1), listed once, ended once.
    A third-party trunk call's RMS (C2, C3) is charged once too, and given back at BYE."""

    async def scenario():
        far = await SipUA.open("itsp", ("127.0.0.1", 9), domain="far.example", host="127.0.0.2")
        node = two_workers(tmp_path, {"ROOM": 20, "RMS": 4},
                           sip={"mode": "inline", "upstream": f"127.0.0.1:{kamailio.port}"}, zones=[
                               {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
                                "peers": ["127.0.0.2/32"], "target": f"127.0.0.2:{far.port}"}])
        trunk = Callee(far, SDP_ANSWER)
        proxy = ("127.0.0.1", node.sip_port)
        count = 16
        endpoints = [await SipUA.open(f"wk{i:02d}x{os.getpid()}", proxy, domain="lab.test") for i in range(count)]
        answering = [Answering(ua) for ua in endpoints]
        try:
            for ua in endpoints:
                assert (await register(ua, ROOM, expires=600)).status == 200
            contacts = kamailio.contacts()
            assert all(ua.contact_uri in contacts.get(ua.user, []) for ua in endpoints)
            paths = paths_of(kamailio, {ua.user for ua in endpoints})
            assert len(paths) == 2, f"Kamailio holds one worker's Path only: {paths}"  # both took REGISTERs
            assert in_use(node)["room"] == count  # R9, one ledger

            for i, ua in enumerate(endpoints):
                callee = answering[(i + 5) % count]
                final, dialog = await call(ua, callee.ua.aor, SDP_OFFER)
                assert final.status == 200, (ua.aor, final)
                calls = node.api("calls")
                assert [c["call_id"] for c in calls] == [dialog.call_id], "one call, listed once (C1)"
                if i % 2:
                    await hang_up(ua, dialog)
                else:
                    await callee.hang_up(dialog.call_id)
                wait_until(lambda: node.api("calls") == [], 5, "the call to end")

            final, dialog = await call(endpoints[0], "sip:+493012345@itsp.example", SDP_OFFER)
            assert final.status == 200, final
            wait_until(lambda: in_use(node)["rms"] == 1, 5, "the trunk call's RMS")
            await hang_up(endpoints[0], dialog)
            wait_until(lambda: in_use(node)["rms"] == 0, 5, "the RMS back at BYE")

            # Inbound from the trunk (C2, C3: one RMS) to each alias: trunk -> node -> Kamailio ->
            # node -> endpoint. Were the second pass charged anew on another worker, it would be
            # classed as a local call (from the upstream, to a registered alias) and the RMS lost.
            trunk.close()
            far = await SipUA.open("itsp", proxy, domain="itsp.example", host="127.0.0.2")
            for ua in endpoints[:8]:
                final, dialog = await call(far, ua.aor, SDP_OFFER)
                assert final.status == 200, final
                assert in_use(node)["rms"] == 1, node.api("calls")
                await hang_up(far, dialog)
                wait_until(lambda: in_use(node)["rms"] == 0, 5, "the RMS back at BYE")
        finally:
            close_all(node, answering, [trunk], endpoints)

    asyncio.run(scenario())


def test_kill_9_of_a_node_with_two_workers_keeps_every_registration(tmp_path):
    """The owner killed with SIGKILL: its worker dies with it (PR_SET_PDEATHSIG), no process is
    left holding the port. Restarted on the same state directory, the node has every registration,
    whichever worker took it (the owner writes the whole location behind), charged once (R9)."""

    async def scenario():
        node = two_workers(tmp_path, {"ROOM": 30})
        proxy = ("127.0.0.1", node.sip_port)
        endpoints = [await SipUA.open(f"k{i:02d}", proxy, domain="lab.test") for i in range(20)]
        try:
            for ua in endpoints:
                assert (await register(ua, ROOM, expires=600)).status == 200
            wait_until(lambda: stored_registrations(node) == 20, 10, "every registration written behind")
            [worker] = worker_pids(node)
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)
            wait_until(lambda: not os.path.exists(f"/proc/{worker}") or _zombie(worker), 10,
                       "the worker to die with its owner")
            node.log.close()
            node.start()
            assert in_use(node)["room"] == 20
            assert sorted(r["alias"] for r in node.api("registrations")) == sorted(ua.aor for ua in endpoints)
            for ua in endpoints:  # each refresh reaches a worker that knows the binding
                assert (await register(ua, ROOM, expires=600)).status == 200
            assert in_use(node)["room"] == 20
        finally:
            close_all(node, endpoints)

    asyncio.run(scenario())


def paths_of(kamailio, users: set[str]) -> set[str]:
    """The Path headers Kamailio keeps for these users' contacts (the instance is shared by tests)."""
    paths, aor = set(), None
    for line in kamailio.rpc("ul.dump").splitlines():
        found = re.match(r"\s*AoR:\s*(\S+)", line)
        if found:
            aor = found.group(1).split("@")[0].removeprefix("sip:")
        path = re.match(r"\s*Path:\s*(\S+)", line)
        if path and aor in users:
            paths.add(path.group(1))
    return paths


def stored_registrations(node: MeterProcess) -> int:
    import sqlite3

    with sqlite3.connect(node.state_dir / "licensing.sqlite", timeout=5) as db:
        count = db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0]
    db.close()
    return count


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_two_workers_enforce_one_capacity_r11(tmp_path):
    """R11 (and P3 the same way): the capacity is the node's, applied once in the one ledger. 24
    endpoints spread over two workers against 16 room licenses: exactly 16 are registered and
    charged, 8 refused 503, whichever worker each reached; each refused one stays refused on retry."""

    async def scenario():
        node = two_workers(tmp_path, {"ROOM": 16})
        proxy = ("127.0.0.1", node.sip_port)
        endpoints = [await SipUA.open(f"cap{i:02d}", proxy, domain="lab.test") for i in range(24)]
        try:
            answers = [(await register(ua, ROOM, expires=600)).status for ua in endpoints]
            assert sorted(answers) == [200] * 16 + [503] * 8, answers
            assert in_use(node)["room"] == 16
            refused = [ua for ua, status in zip(endpoints, answers) if status == 503]
            assert [(await register(ua, ROOM, expires=600)).status for ua in refused] == [503] * 8
            assert len(node.api("registrations")) == 16
            spread = metric(node.metrics_text(), 'meter_sip_worker_requests_total{worker="0"}')
            assert 0 < spread < 32, "every REGISTER reached one worker"  # 24 + 8 in all
        finally:
            close_all(node, endpoints)

    asyncio.run(scenario())
