"""The pieces of meter.workers that need no process: a location replica, summed counters, the
link's frames, and the owner's bookkeeping of what a lost worker leaves charged (issue 11)."""

from __future__ import annotations

import pickle

from meter.admin.latency import LatencyHistogram
from meter.codecs.sip import parse_uri
from meter.sip.counters import SipCounters
from meter.sip.hooks import ALLOW, PendingVerdict, RegisterInfo, Verdict
from meter.sip.location import Binding, LocationService, contact_key
from meter.sip.peer import Peer
from meter.workers.link import FrameProtocol, frame
from meter.workers.remote import OWNER_GONE, RemoteHooks
from meter.workers.stats import WorkerStats, summed_counters, summed_latency
from meter.zones import ZoneTable


def binding(aor: str, contact: str, expires_at: float, cseq: int = 1) -> Binding:
    uri = parse_uri(contact)
    return Binding(aor, uri, {}, expires_at, "call-1", cseq, Peer("udp", "10.0.0.9", 5060), "UA", contact_key(uri))


def test_replace_sets_an_aors_whole_binding_set_as_another_worker_has_it():
    location = LocationService()
    location.restore(binding("sip:a@lab", "sip:a@10.0.0.1", 100.0))
    location.restore(binding("sip:a@lab", "sip:a@10.0.0.2", 100.0))
    fresh = binding("sip:a@lab", "sip:a@10.0.0.2", 200.0, cseq=2)
    location.replace("sip:a@lab", [fresh])  # 10.0.0.1 removed there, 10.0.0.2 refreshed
    assert [(b.contact, b.expires_at) for b in location.lookup("sip:a@lab", 0.0)] == [("sip:a@10.0.0.2", 200.0)]
    assert location.by_contact(parse_uri("sip:a@10.0.0.1"), 0.0) is None
    assert location.registered_over("sip:a@lab", Peer("udp", "10.0.0.9", 5060), 0.0)
    location.replace("sip:a@lab", [])  # unregistered, or expired in the owner
    assert len(location) == 0 and location.lookup("sip:a@lab", 0.0) == []
    assert location.expire(1000.0) == []  # the old heap entries are stale, not expiries


def test_counters_and_latency_of_all_workers_add_up_and_never_go_back_after_a_restart():
    own = SipCounters()
    own.requests_received["REGISTER"] += 3
    own.hook_errors = 1
    worker = WorkerStats()
    other = SipCounters()
    other.requests_received["REGISTER"] += 5
    other.requests_received["INVITE"] += 2
    other.hook_errors = 2
    histogram = LatencyHistogram()
    histogram.observe(0.001)
    worker.update(other.snapshot(), list(histogram.counts), histogram.sum, [{"call_id": "x"}])
    total = summed_counters(own, [worker])
    assert total.requests_received == {"REGISTER": 8, "INVITE": 2} and total.hook_errors == 3
    own_latency = LatencyHistogram()
    own_latency.observe(0.002)
    assert summed_latency(own_latency, [worker]).total == 2
    # The worker is lost and restarted: its successor starts from zero, the node's sum does not.
    worker.retire()
    assert worker.calls == []
    successor = WorkerStats()
    successor.carry(worker)
    fresh = SipCounters()
    fresh.requests_received["REGISTER"] += 1
    successor.update(fresh.snapshot(), [], 0.0, [])
    assert summed_counters(own, [successor]).requests_received["REGISTER"] == 3 + 5 + 1
    assert summed_latency(own_latency, [successor]).total == 2


def test_frames_carry_tuples_in_order_whatever_the_reads_cut_and_end_at_the_close():
    got, closed = [], []
    link = FrameProtocol(got.append, lambda: closed.append(True))
    data = frame(("ask", "register", 1, "info")) + frame(("ended", "c1", "bye"))
    for cut in (1, 3, 7, len(data)):  # a read may end anywhere, inside the length or the body
        got.clear()
        for start in range(0, len(data), cut):
            link.data_received(data[start:start + cut])
        assert got == [("ask", "register", 1, "info"), ("ended", "c1", "bye")]
    link.connection_lost(None)
    assert closed == [True]


def register_info(aor: str, expires: int = 600, contacts=("sip:a@10.0.0.1",)) -> RegisterInfo:
    return RegisterInfo(aor, contacts, "UA", Peer("udp", "10.0.0.9", 5060), expires, "call-1", forwarded=True)


def test_a_question_waits_for_the_owners_answer_and_a_lost_owner_refuses_what_waits():
    sent = []
    hooks = RemoteHooks(sent.append, ZoneTable([]), inline=False)
    answers = []
    pending = hooks.on_register(register_info("sip:a@lab"))
    assert isinstance(pending, PendingVerdict)
    pending.add_done_callback(answers.append)
    (kind, question, rid, info), = sent
    assert (kind, question, info) == ("ask", "register", register_info("sip:a@lab")) and answers == []
    hooks.apply(("verdict", rid, Verdict(False, 503, "Service Unavailable", "no licenses")))
    assert answers == [Verdict(False, 503, "Service Unavailable", "no licenses")]
    waiting = hooks.on_invite("call-info")
    waiting.add_done_callback(answers.append)
    hooks.owner_gone()  # the owner died: nothing may pass uncharged
    assert answers[-1] == OWNER_GONE
    late = hooks.on_invite("call-info")
    assert late.verdict == OWNER_GONE  # refused at once, no question sent
    assert pickle.loads(pickle.dumps(ALLOW)) == ALLOW


def test_a_refresh_of_a_charged_alias_is_allowed_by_the_worker_itself():
    """R9: an alias is charged once; a refresh changes no count, so the worker does not ask. A
    binding too close to its expiry (the owner may release it before the REGISTER settles), a new
    alias, or a removal are asked or answered exactly as the owner's metering would."""
    now = [1000.0]
    sent = []
    location = LocationService()
    hooks = RemoteHooks(sent.append, ZoneTable([]), inline=True, clock=lambda: now[0], settled=32.0)
    hooks.location = location
    location.restore(binding("sip:a@lab", "sip:a@10.0.0.1", expires_at=1600.0))
    assert hooks.on_register(register_info("sip:a@lab")) is ALLOW and sent == []
    assert hooks.on_register(register_info("sip:a@lab", expires=0)) is ALLOW  # removal: never a charge
    assert hooks.on_register(register_info("sip:a@lab", contacts=("*",))) is ALLOW
    now[0] = 1580.0  # 20 s left: inside Timer F, the owner may expire it before the answer
    assert isinstance(hooks.on_register(register_info("sip:a@lab")), PendingVerdict)
    assert isinstance(hooks.on_register(register_info("sip:b@lab")), PendingVerdict)  # never charged
    assert [m[:2] for m in sent] == [("ask", "register"), ("ask", "register")]
