"""Security-relevant log lines carry the source address and the User-Agent (issue 10 item 8): a
refused or would-be-refused registration or call, a malformed request the node answers, an RRQ/ARQ
the gatekeeper refuses, a REGISTER whose To is not a SIP URI."""

from __future__ import annotations

import logging

from meter.codecs.ras import Vendor
from tests.rasclient import RecordingHooks, standalone_net
from tests.sipclient import CoreLab
from tests.unit.test_metering import PHONE, ROOM_KIT, invite, make_metering, register


def lines(caplog, event: str) -> list[dict]:
    return [r.facts for r in caplog.records if r.getMessage() == event]


def test_registration_refused_names_source_and_user_agent(caplog):
    _, policy, _ = make_metering(room=0, desktop=0)
    with caplog.at_level(logging.INFO, logger="meter"):
        assert not register(policy, "alice", ROOM_KIT).allowed
    (facts,) = lines(caplog, "registration.refused")
    assert facts["source"] == str(PHONE) and facts["user_agent"] == ROOM_KIT


def test_observe_mode_would_refuse_names_them_too(caplog):
    _, policy, _ = make_metering(room=0, desktop=0, enforcement="observe")
    with caplog.at_level(logging.INFO, logger="meter"):
        register(policy, "alice", ROOM_KIT)
    (facts,) = lines(caplog, "registration.would_refuse")
    assert facts["source"] == str(PHONE) and facts["user_agent"] == ROOM_KIT


def test_call_refused_names_source_and_user_agent(caplog):
    _, policy, _ = make_metering(rms=1)
    assert invite(policy, "c1", "sip:+1@itsp.example").allowed
    with caplog.at_level(logging.INFO, logger="meter"):
        assert not invite(policy, "c2", "sip:+2@itsp.example").allowed
    (facts,) = lines(caplog, "call.refused")
    assert facts["source"] == str(PHONE) and facts["user_agent"] == "test"


def test_malformed_request_answered_names_source_and_user_agent(caplog):
    lab = CoreLab()
    bad = lab.alice.register(600, headers=[("User-Agent", "svmap"), ("CSeq", "1 INVITE")])  # CSeq method mismatch
    with caplog.at_level(logging.DEBUG, logger="meter.sip"):
        lab.feed(bad.to_bytes().replace(b"CSeq: 1 REGISTER\r\n", b""), lab.alice)
    (facts,) = lines(caplog, "sip.malformed")
    assert facts["source"] == str(lab.alice.peer) and facts["user_agent"] == "svmap"


def test_register_with_a_non_sip_to_names_them(caplog):
    lab = CoreLab()
    req = lab.alice.register(600, headers=[("User-Agent", "svwar")])
    raw = req.to_bytes().replace(b"To: <sip:alice@lab.test>", b"To: <soap.beep://alice@lab.test>")
    with caplog.at_level(logging.INFO, logger="meter.sip"):
        lab.feed(raw, lab.alice)
    (facts,) = lines(caplog, "sip.register.refused")
    assert facts["source"] == str(lab.alice.peer) and facts["user_agent"] == "svwar"


def test_rrq_and_arq_refused_name_source_and_product(caplog):
    hooks = RecordingHooks(refuse_aliases={"mallory"}, max_calls=0)
    net, gk = standalone_net(hooks)
    vendor = Vendor(product_id="OpenH323", version_id="1")
    mallory = net.endpoint(5009, [("h323-ID", "mallory")], vendor=vendor)
    alice = net.endpoint(5001, [("h323-ID", "alice")], vendor=vendor)
    with caplog.at_level(logging.INFO, logger="meter"):
        assert net.register(mallory).short == "RRJ"
        assert net.register(alice).short == "RCF"
        assert net.admit(alice, [("h323-ID", "bob")], dest_address=mallory.call_signal_address)[0].short == "ARJ"
    (rrq,) = lines(caplog, "ras.rrq_refused")
    (arq,) = lines(caplog, "ras.arq_refused")
    assert rrq["source"] == str(mallory.ras_address) and rrq["user_agent"] == "OpenH323"
    assert arq["source"] == str(alice.ras_address) and arq["user_agent"] == "OpenH323"
