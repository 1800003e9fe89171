"""Smart Licensing on the node: a mode change takes effect on the running node at once (L2, L3),
the ledger gets P6 capacity and S2's block, and a state the rules forbid refuses to start (L4, S1)."""

from __future__ import annotations

import asyncio

from meter.app import build_metering
from meter.config import parse
from meter.licensing import smart
from meter.licensing.keys import issue_key
from meter.licensing.registrations import RegistrationFacts
from meter.smart.agent import SmartAgent
from meter.smart.startup import refusal
from meter.store.licensing import init_state, load_issuer
from meter.store.node_licensing import NodeLicensing

NOW = 1_800_000_000.0
SIP_ROOM = "Cisco/CE TelePresence SX80"


def config(tmp_path, extra: str = "", product: str = "expressway"):
    return parse(f'[node]\nstate_dir = "{tmp_path}"\nproduct = "{product}"\n'
                 f'[licensing]\nenforcement = "enforce"\n{extra}')


def node_with_rms_key(tmp_path, quantity=50):
    init_state(tmp_path)
    with NodeLicensing.open(tmp_path) as licensing:
        key = issue_key(load_issuer(licensing.store.issuer_key_path), serial=licensing.serial, option="RMS",
                        quantity=quantity, issued_at=NOW)
        licensing.add_key(key, NOW)
    metering = build_metering(config(tmp_path), NOW)
    clock = [NOW]
    agent = SmartAgent(config(tmp_path).smart, metering.licensing, metering, clock=lambda: clock[0])
    metering.smart = agent
    return metering, agent, clock


def capacity(metering, license="rms"):
    return metering.ledger.snapshot(metering.clock()).to_dict()["licenses"][license]["capacity"]


def test_l3_mode_change_takes_effect_on_the_running_node_within_seconds(tmp_path):
    """L2/L3 and issue 13: `meter mode smart` (another process on the state directory) while the
    node runs: at the next key poll the option keys stop granting and Smart's evaluation applies."""
    metering, agent, clock = node_with_rms_key(tmp_path)
    assert capacity(metering) == 50
    with NodeLicensing.open(tmp_path) as cli:  # what `meter mode smart --yes` does
        cli.switch_to_smart(NOW + 1)
    metering.tick(NOW + 6)  # the 5 s key poll sees the new mode
    assert capacity(metering) == smart.UNLIMITED  # S1 evaluation: no key capacity any more
    assert agent.view(NOW + 6)["authorization"]["status"] == smart.EVALUATION
    asyncio.run(agent.close())


def test_s2_r11_evaluation_expired_refuses_new_registrations_keeps_existing_and_calls(tmp_path):
    """S2/R11: evaluation over, not registered: a new device registration is refused; one made
    before stays charged; the ledger's license capacity still lets calls through."""
    metering, agent, clock = node_with_rms_key(tmp_path)
    agent.licensing.switch_to_smart(NOW)
    agent.mode_changed(NOW)
    facts = RegistrationFacts(role="C", protocol="sip", user_agent=SIP_ROOM)
    assert metering.charge_registration("sip", "sip:before@lab", facts, NOW).ok
    late = NOW + 91 * smart.DAY
    clock[0] = late
    asyncio.run(agent.step(late))
    refused = metering.charge_registration("sip", "sip:after@lab", facts, late)
    assert not refused.ok and refused.reason == "registrations_blocked" and "R11" in refused.rules
    assert ("sip", "sip:before@lab") in metering.registrations
    assert metering.licensing.alarms.is_active(smart.ALARM_EVAL_EXPIRED)
    assert capacity(metering) == smart.UNLIMITED
    asyncio.run(agent.close())


def test_p6_smart_capacity_replaces_key_capacity_in_the_ledger(tmp_path):
    """P6: registered and authorized, the ledger's capacity is the virtual account's pool, not the keys."""
    metering, agent, clock = node_with_rms_key(tmp_path)
    agent.licensing.switch_to_smart(NOW)
    agent.mode_changed(NOW)
    agent.machine.request_registration("tok", NOW)
    agent.machine.registered_with({"instance_id": "i", "smart_account": "SA", "virtual_account": "VA"}, NOW)
    agent.machine.authorized({"status": "authorized", "tags": {"EXPWY_RMS": {
        "requested": 0, "authorized": 0, "status": "authorized", "pool": 7}}}, NOW)
    agent.apply(NOW)
    assert capacity(metering) == 7
    asyncio.run(agent.close())


def test_l4_a_smart_state_with_product_vcs_refuses_to_start(tmp_path):
    """L4: a state directory in Smart mode under a config saying product vcs: the node does not start."""
    init_state(tmp_path)
    with NodeLicensing.open(tmp_path) as licensing:
        licensing.switch_to_smart(NOW)
    assert refusal(config(tmp_path), NOW) == ""
    assert "L4" in refusal(config(tmp_path, product="vcs"), NOW)


def test_s1_cluster_configuration_refused_during_evaluation(tmp_path):
    """S1 (X14.0.1 and the seed; docs/licensing-rules.md records the choice): a node in its Smart
    evaluation does not start with a cluster configured; a PAK node does."""
    init_state(tmp_path)
    clustered = config(tmp_path, '[cluster]\nstore = "redis"\n')
    assert refusal(clustered, NOW) == ""  # PAK
    with NodeLicensing.open(tmp_path) as licensing:
        licensing.switch_to_smart(NOW)
    assert "S1" in refusal(clustered, NOW) and "evaluation" in refusal(clustered, NOW)
