"""The benchmark harness's own pieces (bench/): they must measure what they say they measure.

Against an in-test UDP responder on loopback, small counts, no timing asserts (shared 2-core box).
"""

from __future__ import annotations

import socket
import threading
from collections import Counter

import pytest

from bench import report, sipmsg
from bench.devices import DEVICES, population
from bench.fuzz_targets import TARGETS
from bench.loadgen import LoadResult, LoadSpec, _slices, run_load
from bench.services import node_config
from meter.codecs import sip


class Responder:
    """A UDP peer answering each REGISTER 200 with its Via (RFC 3261 §8.2.6.2); can drop some."""

    def __init__(self, drop_every: int = 0, status: int = 200):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.addr = self.sock.getsockname()
        self.drop_every = drop_every
        self.status = status
        self.received = 0
        self.user_agents: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            self.received += 1
            msg = sip.parse(data)  # what the generator sends must be valid SIP
            self.user_agents[msg.user_agent] += 1
            if self.drop_every and self.received % self.drop_every == 0:
                continue
            via = data[data.index(b"Via:"): data.index(b"\r\n", data.index(b"Via:"))]
            self.sock.sendto(b"SIP/2.0 %d Whatever\r\n%s\r\nContent-Length: 0\r\n\r\n" % (self.status, via), peer)


def test_register_datagrams_are_valid_sip_and_carry_their_sequence_number():
    data = sipmsg.register(42, DEVICES[0], seq=1234, cseq=3, via=("127.0.0.1", 5062), contact="127.0.0.1:5999")
    msg = sip.parse(data)
    assert msg.method == "REGISTER"
    assert msg.cseq.number == 3
    assert msg.top_via.branch == sipmsg.BRANCH_PREFIX + "1234"
    assert msg.to.uri.user == sipmsg.user_name(42)
    assert msg.user_agent == DEVICES[0].user_agent
    assert msg.expires == 3600
    answer = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;rport=5062;branch=z9hG4bKbm1234;received=127.0.0.1\r\n\r\n"
    assert sipmsg.response_key(answer) == (1234, 200)
    assert sipmsg.response_key(b"REGISTER sip:x SIP/2.0\r\n\r\n") is None
    assert sipmsg.response_key(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKother\r\n\r\n") is None


def test_population_keeps_the_device_mix_at_any_size():
    """Rules R2/R3 split: 27 of every 100 endpoints are desktop systems, in every prefix."""
    mix = Counter(d.kind for d in population(1000))
    assert mix == {"room": 730, "desktop": 270}
    assert Counter(d.model for d in population(100)) == {d.model: d.weight for d in DEVICES}


def test_closed_loop_counts_every_answer():
    with Responder() as peer:
        result = run_load(LoadSpec(target=peer.addr, endpoints=300, window=20, sockets=3, timeout=2, deadline=30))
    assert (result.requests, result.sent, result.ok, result.lost) == (300, 300, 300, 0)
    assert len(result.latencies_ns) == 300 and min(result.latencies_ns) > 0
    assert sum(peer.user_agents.values()) == 300
    assert set(peer.user_agents) <= {d.user_agent for d in DEVICES}


def test_losses_are_counted_and_free_the_window():
    """No retransmission: every 4th request is dropped and must count lost, not stall the run."""
    with Responder(drop_every=4) as peer:
        result = run_load(LoadSpec(target=peer.addr, endpoints=80, window=8, sockets=1, timeout=0.2, deadline=30))
    assert result.sent == 80
    assert result.lost == 20
    assert result.ok == 60


def test_non_2xx_answers_are_failures_by_status():
    with Responder(status=503) as peer:
        result = run_load(LoadSpec(target=peer.addr, endpoints=30, window=5, sockets=1, deadline=30))
    assert result.ok == 0
    assert result.failed == {503: 30}


def test_open_loop_sends_the_planned_count_with_refreshes():
    """Open loop over fewer endpoints than requests wraps round: later rounds are refreshes (CSeq + 1)."""
    with Responder() as peer:
        result = run_load(LoadSpec(target=peer.addr, endpoints=20, requests=60, rate=600, sockets=2, deadline=30))
    assert (result.sent, result.ok, result.lost) == (60, 60, 0)


def test_two_generator_processes_split_and_merge():
    with Responder() as peer:
        result = run_load(LoadSpec(target=peer.addr, endpoints=100, window=10, sockets=2, deadline=30), procs=2)
    assert (result.requests, result.ok, result.lost) == (100, 100, 0)


def test_slices_cover_endpoints_window_and_rate_exactly_once():
    spec = LoadSpec(target=("127.0.0.1", 9), endpoints=1001, first=7, requests=3003, window=200, rate=3000)
    parts = _slices(spec, 3)
    assert [p.first for p, _ in parts] == [7, 340, 674]
    assert sum(p.endpoints for p, _ in parts) == 1001
    assert sum(p.total for p, _ in parts) == 3003
    assert sum(p.rate for p, _ in parts) == pytest.approx(3000)
    assert [seq for _, seq in parts] == [0, parts[0][0].total, parts[0][0].total + parts[1][0].total]


def test_percentiles_are_nearest_rank():
    r = LoadResult(latencies_ns=__import__("array").array("q", [i * 1_000_000 for i in range(1, 101)]))
    assert r.percentile(50) == 50.0
    assert r.percentile(99) == 99.0
    assert r.percentile(100) == 100.0


def test_report_stat_table_and_newest_first_sections(tmp_path):
    assert report.stat([3.0, 1.0, 2.0], "{:.1f}") == "2.0 (1.0-3.0)"
    assert report.stat([float("nan"), None]) == "n/a"
    assert report.table(["a", "b"], [["1", "2"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    out = tmp_path / "BENCHMARKS.md"
    report.write_section("## first\n", out)
    report.write_section("## second\n", out)
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert text.index("## second") < text.index("## first")


def test_generated_node_config_is_accepted_by_the_node(tmp_path):
    from meter.config import load

    path = tmp_path / "meter.toml"
    path.write_text(node_config(tmp_path, 15060, 19460, mode="inline", upstream="127.0.0.1:15070"))
    config = load(str(path))
    assert config.sections["sip"].mode == "inline"
    assert config.sections["sip"].upstream == "127.0.0.1:15070"
    assert config.sections["sip"].port == 15060


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_targets_accept_their_seeds(name):
    """Each fuzz target runs its seed corpus raising only the codec's own error."""
    target = TARGETS[name]
    module = target.load()
    seeds = target.seeds()
    assert seeds
    allowed = target.allowed(module)
    passed = 0
    for seed in seeds:
        try:
            target.run(module, seed)
            passed += 1
        except allowed:
            pass
    assert passed > 0


def test_ras_answers_are_matched_without_decoding():
    """requestSeqNum and confirm/reject read from fixed octets agree with the codec's own decode."""
    from bench import rasload
    from meter.codecs import ras

    for data, status in [(ras.registration_confirm(77, endpoint_id="EP1"), 200), (ras.registration_reject(77), 403),
                         (ras.admission_confirm(77, bandwidth=100, dest_call_signal_address=("127.0.0.1", 1720)), 200),
                         (ras.admission_reject(77), 403), (ras.disengage_confirm(77), 200)]:
        assert ras.decode(data).request_seq_num == 77
        assert rasload.classify(data) == (76, status)


def test_ras_requests_decode_with_distinct_addresses_and_sequence_numbers():
    from bench import rasload
    from meter.codecs import ras

    build = rasload.rrq_builder(3)
    rrqs = [ras.decode(build(i, ("127.0.0.1", 40000))) for i in range(3)]
    assert [m.request_seq_num for m in rrqs] == [1, 2, 3]
    assert len({m.call_signal_addresses for m in rrqs}) == 3
    arq = ras.decode(rasload.arq_builder([(0, "EP0"), (1, "EP1")])(0, ("127.0.0.1", 40000)))
    assert (arq.short, arq.endpoint_identifier, arq.request_seq_num) == ("ARQ", "EP0", 1)
    assert [a.value for a in arq.destination] == [rasload.alias(1)]


@pytest.mark.parametrize("flow, per_endpoint", [("register", 1), ("refresh", 1), ("inline", 2), ("call", 6)])
def test_hotpath_flows_do_what_they_claim(flow, per_endpoint):
    # The hot-path figures count messages the node really handled: every one answered or relayed,
    # nothing refused or dropped, and the metering back to zero after the calls (C2: RMS while up).
    import asyncio

    from bench import hotpath

    async def run():
        seconds, messages = await hotpath.measure(flow, 20)
        return seconds, messages

    seconds, messages = asyncio.run(run())
    assert messages == 20 * per_endpoint and seconds > 0
    h = hotpath.LAST
    counters = h.core.counters
    assert counters.internal_errors == 0 and counters.malformed_dropped == 0
    assert counters.retransmissions_absorbed == 0
    if flow in ("register", "refresh", "inline"):
        assert len(h.metering.registrations) == 20
        assert all(data.startswith(b"SIP/2.0 200") for data, _ in h.sent if not data.startswith(b"REGISTER"))
    if flow == "call":
        assert h.metering.calls == {} and h.metering.ledger.snapshot(0).licenses["rms"].in_use == 0
        assert counters.requests_received["BYE"] == 20 and counters.requests_received["INVITE"] == 20


def test_scrape_bench_builds_both_documents_for_the_registrations_it_holds():
    """``bench.scrape``: the node it times holds the registrations and standing calls it says."""
    from bench import scrape

    got = scrape.measure(30, 2)
    assert (got["registrations"], got["calls"]) == (30, scrape.CALLS_UP)
    assert got["metrics_ms"][0] > 0 and got["licenses_ms"][0] > 0
