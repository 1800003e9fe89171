"""Registrar rules (RFC 3261 §10.3) and the call/dialog table, sans-I/O."""

from __future__ import annotations

import pytest

from meter.codecs.sip import parse_name_addr, parse_uri
from meter.sip.dialogs import ANSWERED, CONFIRMED, DIALOG_CONFIRMED, DIALOG_EARLY, EARLY, Call, DialogTable
from meter.sip.peer import Peer
from meter.sip.location import MAX_BINDINGS_PER_AOR, LocationService, RegistrarError, RegisterRequest

SRC = Peer("udp", "10.0.0.2", 5062)
AOR = "sip:alice@lab.test"


def req(*contacts: str, expires=None, star=False, call_id="c1", cseq=1):
    return RegisterRequest(AOR, tuple(parse_name_addr(c) for c in contacts), star, expires, call_id, cseq, SRC, "ua/1")


@pytest.fixture
def reg():
    return LocationService(min_expires=60, max_expires=3600, default_expires=1800)


def test_register_binds_with_header_expires_and_lists_bindings(reg):
    change = reg.register(req("<sip:alice@10.0.0.2:5062>", expires=120), now=0.0)
    assert [b.contact for b in change.bindings] == ["sip:alice@10.0.0.2:5062"]
    assert change.bindings[0].remaining(0.0) == 120
    assert change.bindings[0].contact_value(20.0) == "<sip:alice@10.0.0.2:5062>;expires=100"


def test_contact_expires_param_wins_over_header_and_default_applies(reg):
    change = reg.register(req("<sip:alice@10.0.0.2:5062>;expires=300", "<sip:alice@10.0.0.2:5099>", expires=None),
                          now=0.0)
    got = {b.contact: b.remaining(0.0) for b in change.bindings}
    assert got == {"sip:alice@10.0.0.2:5062": 300, "sip:alice@10.0.0.2:5099": 1800}


def test_too_brief_interval_gets_423_with_min_expires(reg):
    with pytest.raises(RegistrarError) as info:
        reg.register(req("<sip:alice@10.0.0.2:5062>", expires=30), now=0.0)
    assert info.value.status == 423
    assert ("Min-Expires", "60") in info.value.headers
    assert reg.lookup(AOR, 0.0) == []


def test_long_interval_is_shortened_to_max_expires(reg):
    change = reg.register(req("<sip:alice@10.0.0.2:5062>", expires=99999), now=0.0)
    assert change.bindings[0].remaining(0.0) == 3600


def test_expires_zero_removes_one_binding(reg):
    reg.register(req("<sip:alice@10.0.0.2:5062>", "<sip:alice@10.0.0.2:5099>", expires=600), now=0.0)
    change = reg.register(req("<sip:alice@10.0.0.2:5099>", expires=0, cseq=2), now=1.0)
    assert [b.contact for b in change.bindings] == ["sip:alice@10.0.0.2:5062"]


def test_star_needs_expires_zero_and_removes_everything(reg):
    reg.register(req("<sip:alice@10.0.0.2:5062>", expires=600), now=0.0)
    with pytest.raises(RegistrarError) as info:
        reg.register(req(star=True, expires=60, cseq=2), now=1.0)
    assert info.value.status == 400
    change = reg.register(req(star=True, expires=0, cseq=3), now=1.0)
    assert change.bindings == ()
    assert reg.lookup(AOR, 1.0) == [] and reg.is_known(AOR)


def test_out_of_order_cseq_on_same_call_id_is_refused(reg):
    reg.register(req("<sip:alice@10.0.0.2:5062>", expires=600, cseq=5), now=0.0)
    with pytest.raises(RegistrarError) as info:
        reg.register(req("<sip:alice@10.0.0.2:5062>", expires=0, cseq=4), now=1.0)
    assert info.value.status == 500
    assert len(reg.lookup(AOR, 1.0)) == 1
    # another Call-ID (a rebooted phone) may always update
    reg.register(req("<sip:alice@10.0.0.2:5062>", expires=0, call_id="other", cseq=1), now=1.0)
    assert reg.lookup(AOR, 1.0) == []


def test_query_without_contact_changes_nothing(reg):
    reg.register(req("<sip:alice@10.0.0.2:5062>", expires=600), now=0.0)
    assert reg.register(req(cseq=2), now=1.0) is None
    assert len(reg.lookup(AOR, 1.0)) == 1


def test_expiry_drops_bindings_and_reports_each_aor_once(reg):
    reg.register(req("<sip:alice@10.0.0.2:5062>", "<sip:alice@10.0.0.2:5099>;expires=100", expires=60), now=0.0)
    assert reg.expire(59.0) == []
    changes = reg.expire(60.0)
    assert [(c.aor, [b.contact for b in c.bindings]) for c in changes] == [(AOR, ["sip:alice@10.0.0.2:5099"])]
    changes = reg.expire(100.0)
    assert [(c.aor, c.bindings) for c in changes] == [(AOR, ())]
    assert len(reg) == 0


def test_refresh_outlives_the_old_expiry(reg):
    reg.register(req("<sip:alice@10.0.0.2:5062>", expires=60, cseq=1), now=0.0)
    reg.register(req("<sip:alice@10.0.0.2:5062>", expires=60, cseq=2), now=50.0)
    assert reg.expire(61.0) == []  # the stale heap entry of the first registration is skipped
    assert len(reg.lookup(AOR, 61.0)) == 1


def test_by_contact_finds_the_binding_for_a_request_uri(reg):
    reg.register(req("<sip:alice@10.0.0.2:5062>", expires=60), now=0.0)
    assert reg.by_contact(parse_uri("sip:alice@10.0.0.2:5062;transport=udp"), 1.0).aor == AOR
    assert reg.by_contact(parse_uri("sip:alice@10.0.0.2:5063"), 1.0) is None
    assert reg.by_contact(parse_uri("sip:alice@10.0.0.2:5062"), 61.0) is None  # expired


def test_too_many_contacts_for_one_aor_is_refused(reg):
    contacts = [f"<sip:alice@10.0.0.2:{6000 + i}>" for i in range(MAX_BINDINGS_PER_AOR + 1)]
    with pytest.raises(RegistrarError) as info:
        reg.register(req(*contacts, expires=60), now=0.0)
    assert info.value.status == 503


def test_learn_replaces_bindings_with_the_upstream_answer(reg):
    mine = parse_name_addr("<sip:alice@10.0.0.2:5062>")
    other = parse_name_addr("<sip:alice@10.9.9.9:5060>")
    from meter.sip.location import contact_key

    change = reg.learn(AOR, [(mine, 60), (other, 30)], call_id="c", cseq=1, source=SRC,
                       sent={contact_key(mine.uri)}, user_agent="ua/1", now=0.0)
    by = {b.contact: b for b in change.bindings}
    assert by["sip:alice@10.0.0.2:5062"].source == SRC
    assert by["sip:alice@10.9.9.9:5060"].source is None  # registered elsewhere, not through us
    change = reg.learn(AOR, [], call_id="c", cseq=2, source=SRC, sent=set(), user_agent="ua/1", now=1.0)
    assert change.bindings == () and len(reg) == 0


# -- the call / dialog table -------------------------------------------------------------------------------


def make_call(call_id="call-1", tag="ft", created=0.0):
    return Call(call_id, tag, AOR, "sip:bob@lab.test", "sip:bob@lab.test", SRC, created, 1e9 + created)


def test_dialog_moves_early_confirmed_and_is_found_from_either_side():
    table = DialogTable()
    call = make_call()
    table.add(call)
    table.provisional(call, "tt", 1.0)
    assert call.state == EARLY and call.dialogs["tt"].state == DIALOG_EARLY
    assert table.answered(call, "tt", b"sdp", 2.0) is True
    assert table.answered(call, "tt", b"sdp", 2.1) is False  # a retransmitted 2xx
    assert call.state == ANSWERED and call.dialogs["tt"].state == DIALOG_CONFIRMED
    assert table.confirmed(call) is True and table.confirmed(call) is False
    assert call.state == CONFIRMED
    assert table.find("call-1", "ft") is call  # caller -> callee: From tag is the caller's
    assert table.find("call-1", "tt", "ft") is call  # callee -> caller: To tag is the caller's
    assert table.find("call-2", "ft") is None


def test_end_is_true_exactly_once():
    table = DialogTable()
    call = make_call()
    table.add(call)
    assert table.end(call) is True
    assert table.end(call) is False
    assert len(table) == 0


def test_reaper_ends_only_calls_older_than_max_age():
    table = DialogTable()
    old, young = make_call("a", created=0.0), make_call("b", created=50.0)
    table.add(old)
    table.add(young)
    assert table.reap(now=100.0, max_age=60.0) == [old]
    assert [c.call_id for c in table] == ["b"]
