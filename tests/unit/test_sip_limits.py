"""Per-source limits (issue 10 item 3, Kamailio's pike): the sans-I/O limiter with a fake clock, and
the SIP core wired to it (drop or 503 with Retry-After, RFC 3261 §21.5.4)."""

from __future__ import annotations

import logging
import tracemalloc

import pytest

from meter import config as cfg
from meter.codecs.sip import Response
from meter.sip.limits import FIRST, LIMITED, PASS, LimitSettings, SourceLimiter
from meter.sip.peer import Peer
from tests.sipclient import CoreLab, Phone

T0 = 1000.0


def limiter(**kw) -> SourceLimiter:
    return SourceLimiter(LimitSettings(**kw))


# -- the rate: a two-bucket sliding window -----------------------------------------------------------------


def test_pike_rate_passes_the_limit_then_limits_with_one_report_per_window():
    lim = limiter(requests=64, window=2.0)
    assert [lim.check_rate("10.1.1.1", T0) for _ in range(64)] == [PASS] * 64
    assert lim.check_rate("10.1.1.1", T0) == FIRST  # the window's one log line
    assert lim.check_rate("10.1.1.1", T0 + 0.5) == LIMITED
    assert lim.limited["rate"] == 2
    assert lim.check_rate("10.9.9.9", T0) == PASS  # another source is untouched


def test_pike_source_stays_limited_while_it_keeps_flooding_and_recovers_after_it_stops():
    """Every request counts, the limited ones too (pike): a source sending above the rate is held
    back for as long as it does, with one FIRST per window; two windows of silence clear it."""
    lim = limiter(requests=64, window=2.0)
    verdicts = [lim.check_rate("10.1.1.1", T0 + i / 3000) for i in range(60_000)]  # 3,000/s for 20 s
    assert verdicts.count(PASS) == 64
    assert verdicts.count(FIRST) == 10  # windows [1000,1002), ... [1018,1020): one report each
    assert lim.check_rate("10.1.1.1", T0 + 24.0) == PASS


def test_pike_steady_rate_under_the_limit_is_never_limited_and_over_it_is():
    """The sliding estimate (previous bucket weighted by its overlap) has no boundary burst: 30/s
    under a 64/2 s limit always passes, 40/s is limited within two windows."""
    lim = limiter(requests=64, window=2.0)
    assert all(lim.check_rate("10.1.1.1", T0 + i / 30) == PASS for i in range(30 * 60))
    over = [lim.check_rate("10.2.2.2", T0 + i / 40) for i in range(40 * 10)]
    assert PASS in over and FIRST in over and over.index(FIRST) < 40 * 4


def test_pike_rate_off_with_zero_requests():
    lim = limiter(requests=0)
    assert all(lim.check_rate("10.1.1.1", T0) == PASS for _ in range(10_000))
    assert len(lim) == 0


def test_pike_exempt_sources_pass_and_are_asked_once():
    """Trusted zone peers and the upstream carry many users: exempt, and the predicate is asked
    only when a source first goes over a limit (never on the common path)."""
    asked = []
    lim = SourceLimiter(LimitSettings(requests=2), exempt=lambda host: asked.append(host) or host == "10.0.0.50")
    assert [lim.check_rate("10.0.0.50", T0) for _ in range(1000)] == [PASS] * 1000
    assert asked == ["10.0.0.50"]
    assert lim.check_rate("10.1.1.1", T0) == PASS and asked == ["10.0.0.50"]
    lim.check_rate("10.1.1.1", T0), lim.check_rate("10.1.1.1", T0)
    assert asked == ["10.0.0.50", "10.1.1.1"]
    assert lim.limited["rate"] == 1


# -- memory: a hard cap on the per-source table --------------------------------------------------------------


def test_pike_table_stays_under_its_cap_for_a_million_distinct_sources():
    """A flood from 1,000,000 spoofed sources: the table never holds more than max_sources (LRU)."""
    cap = 4096
    lim = limiter(requests=64, max_sources=cap)
    biggest = 0
    for i in range(1_000_000):
        lim.check_rate(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", T0 + i / 100_000)
        if i % 997 == 0:
            biggest = max(biggest, len(lim))
    assert biggest <= cap and len(lim) == cap
    assert lim.evicted == 1_000_000 - cap


def test_pike_least_recently_seen_source_is_evicted_so_an_active_flooder_stays_limited():
    lim = limiter(requests=8, max_sources=100)
    flooder = "10.66.66.66"
    for i in range(10_000):
        lim.check_rate(flooder, T0)
        lim.check_rate(f"10.0.{i >> 8 & 255}.{i & 255}", T0)
    assert lim.check_rate(flooder, T0) == LIMITED  # never evicted: it is always the most recent


def test_pike_housekeeping_forgets_sources_silent_for_two_windows():
    lim = limiter(requests=64, window=2.0)
    for i in range(500):
        lim.check_rate(f"10.0.1.{i % 250}", T0)
    lim.check_rate("10.0.2.1", T0 + 3.0)
    lim.expire(T0 + 3.0)
    assert len(lim) == 251  # the old ones are still in the previous window
    lim.expire(T0 + 5.9)
    assert len(lim) == 1  # seen in the previous window: kept
    lim.expire(T0 + 6.1)
    assert len(lim) == 0


def test_pike_entry_size_backs_the_documented_17_mb_at_65536_sources():
    lim = limiter(requests=64)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(65_536):
        lim.check_rate(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", T0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown / 65_536 < 300, f"{grown / 65_536:.0f} bytes per source"  # documented: about 260


# -- registrations per source ---------------------------------------------------------------------------------


def test_registrations_cap_per_source_counts_bound_aors_and_frees_on_unregister():
    lim = limiter(registrations=3)
    for n in range(3):
        assert lim.check_registration(f"sip:u{n}@lab", "10.1.1.1", T0) == PASS
        lim.bindings_changed(f"sip:u{n}@lab", frozenset({"10.1.1.1"}))
    assert lim.check_registration("sip:u3@lab", "10.1.1.1", T0) == FIRST
    assert lim.check_registration("sip:u3@lab", "10.1.1.1", T0) == LIMITED
    assert lim.check_registration("sip:u0@lab", "10.1.1.1", T0) == PASS  # a refresh always passes
    assert lim.check_registration("sip:u3@lab", "10.2.2.2", T0) == PASS  # another address
    lim.bindings_changed("sip:u1@lab", frozenset())  # unregistered: the slot is free again
    assert lim.registrations_from("10.1.1.1") == 2
    assert lim.check_registration("sip:u3@lab", "10.1.1.1", T0) == PASS
    assert lim.limited["registrations"] == 2


# -- settings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table, expected", [
    ({"requests": -1}, "requests and registrations"),
    ({"window": 0}, "window"),
    ({"max_sources": 0}, "max_sources"),
    ({"rate_action": "reject"}, "rate_action"),
    ({"burst": 10}, "unknown key 'burst'"),
])
def test_limits_section_bad_values_stop_start_up(table, expected):
    text = "[limits]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in table.items())
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse(text, source="meter.toml")
    assert expected in str(err.value) and "[limits]" in str(err.value)


def test_limits_section_defaults_are_pike_like():
    limits = cfg.parse("").limits
    assert (limits.requests, limits.window, limits.rate_action) == (64, 2.0, "drop")
    assert (limits.registrations, limits.registrations_action, limits.max_sources) == (32, "503", 65536)


# -- the SIP core with limits --------------------------------------------------------------------------------


def flood(lab: CoreLab, phone: Phone, count: int, *, user_agent="flooder/1.0"):
    for i in range(count):
        phone.user = f"u{i}"
        lab.feed(phone.register(headers=[("User-Agent", user_agent)], call_id=f"flood-{i}"), phone)


def test_core_register_flood_from_one_source_is_dropped_before_the_parse_and_not_charged():
    lab = CoreLab(limits=LimitSettings(requests=64, registrations=0))
    attacker = Phone("x", "10.6.6.6", 5070)
    flood(lab, attacker, 3000)
    answers = lab.net.take()
    assert len(answers) == 64 and all(m.status == 200 for m, _ in answers)
    assert len(lab.policy.events("register")) == 64  # charged only what passed
    assert lab.core.counters.requests_received["REGISTER"] == 64  # the rest never reached the parser
    assert lab.core.source_limits.limited["rate"] == 3000 - 64
    lab.feed(lab.bob.request("OPTIONS", f"sip:{'10.0.0.1'}:5060"), lab.bob)  # another source still answered
    resp, peer = lab.net.only()
    assert resp.status == 200 and peer.host == lab.bob.host


def test_core_limited_garbage_costs_no_parse():
    lab = CoreLab(limits=LimitSettings(requests=4))
    for _ in range(100):
        lab.core.receive_datagram(b"\x00garbage that is not SIP\r\n\r\n", Peer("udp", "10.6.6.6", 5070))
    assert lab.core.counters.malformed_dropped == 4  # parsed (and dropped) only before the limit


def test_core_rate_action_503_carries_retry_after_rfc3261_21_5_4():
    lab = CoreLab(limits=LimitSettings(requests=2, rate_action="503", retry_after=7))
    for _ in range(3):
        lab.feed(lab.alice.request("OPTIONS", "sip:10.0.0.1:5060"), lab.alice)
    statuses = [m.status for m, _ in lab.net.take()]
    assert statuses == [200, 200, 503]
    lab.feed(lab.alice.request("OPTIONS", "sip:10.0.0.1:5060"), lab.alice)
    resp, _ = lab.net.only()
    assert isinstance(resp, Response) and resp.status == 503
    assert resp.header("retry-after") == "7" and "too many requests" in resp.reason


def test_core_responses_and_keepalives_do_not_count_towards_the_rate():
    lab = CoreLab(limits=LimitSettings(requests=2))
    for _ in range(50):
        lab.core.receive_datagram(b"\r\n\r\n", lab.alice.peer)
        lab.core.receive_datagram(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\n"
                                  b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
                                  b"Content-Length: 0\r\n\r\n", lab.alice.peer)
    lab.feed(lab.alice.request("OPTIONS", "sip:10.0.0.1:5060"), lab.alice)
    assert lab.net.only()[0].status == 200


def test_core_one_log_line_per_source_per_window_with_the_first_user_agent(caplog):
    lab = CoreLab(limits=LimitSettings(requests=10, window=2.0, registrations=0))
    attacker = Phone("x", "10.6.6.6", 5070)
    with caplog.at_level(logging.WARNING, logger="meter.sip.limits"):
        flood(lab, attacker, 500, user_agent="friendly-scanner")
        lab.clock.advance(2.0)
        flood(lab, attacker, 500, user_agent="second-window")
    lines = [r for r in caplog.records if r.getMessage() == "sip.limited"]
    assert len(lines) == 2
    assert lines[0].facts["source"] == "10.6.6.6" and lines[0].facts["user_agent"] == "friendly-scanner"
    assert lines[0].facts["reason"] == "rate" and lines[0].facts["action"] == "drop"
    assert lines[1].facts["user_agent"] == "second-window"


def test_core_registrations_cap_per_source_503_before_any_charge():
    lab = CoreLab(limits=LimitSettings(requests=0, registrations=3))
    phone = Phone("x", "10.7.7.7", 5070)
    flood(lab, phone, 5)
    statuses = [m.status for m, _ in lab.net.take()]
    assert statuses == [200, 200, 200, 503, 503]
    assert len(lab.policy.events("register")) == 3  # the hook (the charge) never saw the others
    assert len(lab.core.txns.servers) <= 3  # refused before any transaction: no state kept
    phone.user = "u1"
    lab.feed(phone.register(call_id="flood-1"), phone)  # a refresh of a bound AOR passes
    assert lab.net.only()[0].status == 200
    lab.feed(phone.register(expires=0, call_id="flood-1"), phone)  # unregister frees the slot
    assert lab.net.only()[0].status == 200
    phone.user = "u4"
    lab.feed(phone.register(call_id="flood-4"), phone)
    assert lab.net.only()[0].status == 200
    assert lab.core.source_limits.limited["registrations"] == 2


def test_core_registrations_cap_drop_sends_nothing():
    lab = CoreLab(limits=LimitSettings(requests=0, registrations=1, registrations_action="drop"))
    flood(lab, Phone("x", "10.7.7.7", 5070), 3)
    assert [m.status for m, _ in lab.net.take()] == [200]


class TrustingRecorder:
    """Hooks that trust one zone peer (as SipMetering.trusted_source does for [[zones]] peers)."""

    def __init__(self, inner, trusted):
        self.inner, self.trusted = inner, trusted

    def trusted_source(self, host):
        return host == self.trusted

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_core_trusted_zone_peer_is_exempt_from_both_limits():
    from tests.sipclient import Recorder

    lab = CoreLab(policy=TrustingRecorder(Recorder(), "10.8.8.8"), limits=LimitSettings(requests=4, registrations=2))
    flood(lab, Phone("gw", "10.8.8.8", 5060), 40)
    assert [m.status for m, _ in lab.net.take()] == [200] * 40


def test_core_upstream_is_exempt_inline():
    lab = CoreLab(mode="inline", limits=LimitSettings(requests=2))
    upstream = Phone("kam", "10.0.0.50", 5060)
    for _ in range(20):
        lab.feed(upstream.request("OPTIONS", "sip:10.0.0.1:5060"), upstream)
    assert [m.status for m, _ in lab.net.take()] == [200] * 20
    assert lab.core.source_limits.limited["rate"] == 0


def test_core_housekeeping_forgets_silent_sources():
    lab = CoreLab(limits=LimitSettings(requests=64))
    for i in range(100):
        lab.core.receive_datagram(b"x", Peer("udp", f"10.5.0.{i}", 5060))
    assert len(lab.core.source_limits) == 100
    lab.clock.advance(10.0)  # the housekeeping tick runs on the clock
    assert len(lab.core.source_limits) == 0


def test_metrics_export_limited_total_by_reason_and_the_limited_sources_gauge():
    from prometheus_client import CollectorRegistry, generate_latest

    from meter.admin.metrics import NodeCollector

    lab = CoreLab(limits=LimitSettings(requests=1, registrations=0))
    for _ in range(5):
        lab.feed(lab.alice.request("OPTIONS", "sip:10.0.0.1:5060"), lab.alice)

    class OnlyLimits:
        def collect(self):
            return NodeCollector(None)._limit_families(lab.core)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(OnlyLimits())
    text = generate_latest(registry).decode()
    assert 'meter_sip_limited_total{reason="rate"} 4.0' in text
    assert 'meter_sip_limited_total{reason="registrations"} 0.0' in text
    assert "meter_sip_limited_sources 1.0" in text
    assert "meter_sip_limit_tracked_sources 1.0" in text


def test_core_stream_messages_are_rate_limited_too():
    """TCP and TLS hand the core framed messages (receive_message): the same per-source rate."""
    from meter.codecs.sip import parse

    lab = CoreLab(limits=LimitSettings(requests=3))
    tcp = Phone("t", "10.4.4.4", 5080, transport="tcp")
    for _ in range(10):
        lab.core.receive_message(parse(tcp.request("OPTIONS", "sip:10.0.0.1:5060").to_bytes()), tcp.peer)
    assert [m.status for m, _ in lab.net.take()] == [200, 200, 200]
    assert lab.core.source_limits.limited["rate"] == 7


def test_core_inline_registrations_cap_counts_the_bindings_learned_from_the_upstream():
    """Inline, an AOR counts for its source once the upstream's 200 OK binds it (RFC 3261 §10.3
    step 8); the cap then answers 503 before anything is forwarded or charged."""
    from meter.codecs.sip import make_response

    lab = CoreLab(mode="inline", limits=LimitSettings(requests=0, registrations=2))
    phone = Phone("x", "10.7.7.7", 5070)
    for n in range(2):
        phone.user = f"u{n}"
        lab.feed(phone.register(600, call_id=f"inline-{n}"), phone)
        fwd, peer = lab.net.only()
        assert peer.host == "10.0.0.50"
        lab.feed(make_response(fwd, 200, to_tag="up", headers=[("Contact", f"<{phone.contact_uri}>;expires=300")]),
                 lab.upstream)
        assert lab.net.only()[0].status == 200
    assert lab.core.source_limits.registrations_from("10.7.7.7") == 2
    phone.user = "u2"
    lab.feed(phone.register(600, call_id="inline-2"), phone)
    resp, peer = lab.net.only()
    assert resp.status == 503 and peer.host == "10.7.7.7"
    assert [e[1] for e in lab.policy.events("register")] == ["sip:u0@lab.test", "sip:u1@lab.test"]
