"""Smart Licensing's pure state machine (meter.licensing.smart): S1-S14 and P6 in simulated time.

The agent's part is played here by a loop that asks ``next_action`` and answers as a manager would
(contract C), so a whole year runs in a few milliseconds.
"""

from __future__ import annotations

import pytest

from meter.licensing import smart
from meter.licensing.smart import (
    AUTHORIZE, DAY, REGISTER, RENEW_ID, REPORT_USAGE, SmartMachine, SmartRefused, SmartTimers,
)

T0 = 1_800_000_000.0
HOUR = 3600.0


def manager_register(now, *, export=True, account="VA-Lab"):
    return {"instance_id": "inst-1", "id_cert_pem": "", "ca_cert_pem": "", "smart_account": "SA-Lab",
            "virtual_account": account, "export_controlled": export,
            "id_cert_expires_at": now + 365 * DAY, "renew_id_after": now + 180 * DAY}


def manager_authorize(now, usage, pool):
    tags, ok = {}, True
    for lic, n in usage.items():
        tag = smart.TAGS[lic]
        have = pool.get(tag, 0)
        status = "authorized" if n <= have else "out_of_compliance"
        ok = ok and status == "authorized"
        tags[tag] = {"requested": n, "authorized": have, "status": status}
    return {"status": "authorized" if ok else "out_of_compliance", "tags": tags, "authorized_at": now,
            "expires_at": now + 90 * DAY, "renew_after": now + 30 * DAY}


class Lab:
    """Runs the machine's actions against a pure manager; ``reachable`` False fails them (S9)."""

    def __init__(self, machine: SmartMachine, pool=None):
        self.m, self.pool = machine, pool or {"EXPWY_RMS": 10, "EXPWY_ROOM": 5}
        self.reachable, self.usage = True, {"rms": 2, "room": 1}
        self.log: list[tuple[float, str, bool]] = []
        self.now = 0.0

    def run_until(self, end: float) -> None:
        while True:
            action, at = self.m.next_action(self.now or end)
            if action is None or at > end:
                self.now = end
                return
            self.now = max(self.now, at)
            self.do(action, self.now)

    def do(self, action, now):
        if not self.reachable:
            self.m.failed(action, "manager unreachable: connection refused", now)
            self.log.append((now, action, False))
            return
        if action in (REGISTER, RENEW_ID):
            self.m.registered_with(manager_register(now), now, hostname="meter-1")
        elif action == AUTHORIZE:
            self.m.authorized(manager_authorize(now, self.usage, self.pool), now)
        elif action == REPORT_USAGE:
            self.m.usage_reported(now)
        self.log.append((now, action, True))


def test_s1_smart_on_starts_a_90_day_evaluation_and_s2_after_it_new_registrations_are_refused():
    """S1: turning Smart on starts 90 days of evaluation (an alarm warns before the end); S2/R11:
    once it ran out unregistered, new device registrations are refused, calls are not limited."""
    m = SmartMachine()
    m.start_evaluation(T0)
    assert m.authorization_state(T0) == smart.EVALUATION and m.registration_state(T0) == smart.UNREGISTERED
    assert m.evaluation_left(T0 + 10 * DAY) == pytest.approx(80 * DAY)
    effects = m.effects(T0 + 10 * DAY)
    assert effects.block_registrations == "" and effects.alarms == {}
    assert effects.capacity["rms"] == smart.UNLIMITED  # evaluation: full use
    assert smart.ALARM_EVAL_ENDING in m.effects(T0 + 80 * DAY).alarms
    late = m.effects(T0 + 90 * DAY)
    assert "S2" in late.block_registrations and smart.ALARM_EVAL_EXPIRED in late.alarms
    assert late.capacity["rms"] == smart.UNLIMITED  # existing registrations and calls keep going
    assert m.authorization_state(T0 + 90 * DAY) == smart.EVALUATION_EXPIRED
    m.start_evaluation(T0 + 100 * DAY)  # a second switch does not restart it
    assert m.evaluation_expired(T0 + 100 * DAY)


def test_s1_cluster_configuration_refused_during_evaluation():
    """S1 (X14.0.1 and the seed): no cluster configuration while in evaluation; allowed once registered."""
    m = SmartMachine()
    m.start_evaluation(T0)
    assert not m.cluster_configuration_allowed(T0 + DAY)
    m.request_registration("tok", T0 + DAY)
    m.registered_with(manager_register(T0 + DAY), T0 + DAY)
    assert m.cluster_configuration_allowed(T0 + DAY)


def test_s2_registering_after_evaluation_expired_lifts_the_block():
    """S2: the block lasts 'until it is registered'."""
    m = SmartMachine()
    m.start_evaluation(T0)
    assert m.effects(T0 + 95 * DAY).block_registrations
    m.request_registration("tok", T0 + 95 * DAY)
    m.registered_with(manager_register(T0 + 95 * DAY), T0 + 95 * DAY)
    assert m.effects(T0 + 95 * DAY).block_registrations == ""


def test_s3_token_registration_and_reregister_moves_to_another_virtual_account():
    """S3: a token registers; registering again while registered needs the reregister option and
    moves the instance to the new token's virtual account."""
    m = SmartMachine()
    m.start_evaluation(T0)
    with pytest.raises(SmartRefused, match="S3"):
        m.request_registration("   ", T0)
    m.request_registration("tok-1", T0)
    assert m.registration_state(T0) == smart.REG_PENDING
    assert m.next_action(T0) == (REGISTER, T0)
    m.registered_with(manager_register(T0), T0)
    assert m.registration_state(T0) == smart.REGISTERED and m.s.virtual_account == "VA-Lab"
    with pytest.raises(SmartRefused, match="S3"):
        m.request_registration("tok-2", T0 + 1)
    m.authorized(manager_authorize(T0, {"rms": 1}, {"EXPWY_RMS": 1}), T0)
    m.usage_reported(T0)
    m.request_registration("tok-2", T0 + 1, reregister=True)
    assert m.next_action(T0 + 1) == (REGISTER, T0 + 1)
    m.registered_with(manager_register(T0 + 1, account="VA-Other"), T0 + 1)
    assert m.s.virtual_account == "VA-Other" and m.s.registered_at == T0 + 1 and not m.s.token


def test_s4_transports_and_no_transport_change_while_registered():
    """S4: Direct (default), On-Prem, Proxy; a change while registered is refused: deregister first."""
    m = SmartMachine()
    assert m.s.transport == {"kind": "direct"}
    with pytest.raises(ValueError, match="transport kind"):
        m.set_transport({"kind": "carrier-pigeon"}, T0)
    m.set_transport({"kind": "onprem", "url": "https://ssm.lab/SmartTransport"}, T0)
    m.request_registration("tok", T0)
    m.registered_with(manager_register(T0), T0)
    with pytest.raises(SmartRefused, match="S4.*deregister first"):
        m.set_transport({"kind": "direct"}, T0 + 1)
    m.set_transport({"kind": "onprem", "url": "https://ssm.lab/SmartTransport"}, T0 + 1)  # same: fine
    m.deregistered(T0 + 2, manager_told=True)
    m.set_transport({"kind": "proxy", "host": "proxy.lab", "port": 3128, "user": "u", "password": "p"}, T0 + 2)
    assert m.s.transport["kind"] == "proxy"


def test_s5_every_registration_state():
    """S5: Registered; Unregistered; registration expired; registration pending; registration failed."""
    m = SmartMachine()
    m.start_evaluation(T0)
    seen = {m.registration_state(T0)}
    m.request_registration("bad", T0)
    seen.add(m.registration_state(T0))
    assert m.failed(REGISTER, "token invalid", T0, code="token_invalid") is None  # no retry: a new token
    seen.add(m.registration_state(T0))
    assert m.next_action(T0) == (None, None)
    m.request_registration("good", T0 + 1)
    m.registered_with(manager_register(T0 + 1), T0 + 1)
    seen.add(m.registration_state(T0 + 1))
    # The ID certificate not renewed for a year: the registration expires.
    seen.add(m.registration_state(T0 + 1 + 366 * DAY))
    assert seen == set(smart.REGISTRATION_STATES)


def test_s6_every_authorization_state():
    """S6: Authorized, Authorization expired, Out of compliance, No licenses in use, Evaluation mode,
    Evaluation expired (Not applicable is PAK mode's: the API says it)."""
    m = SmartMachine()
    m.start_evaluation(T0)
    seen = {m.authorization_state(T0), m.authorization_state(T0 + 91 * DAY)}
    now = T0 + DAY
    m.request_registration("tok", now)
    m.registered_with(manager_register(now), now)
    m.authorized(manager_authorize(now, {"rms": 2}, {"EXPWY_RMS": 10}), now)
    seen.add(m.authorization_state(now, {"rms": 2}))
    seen.add(m.authorization_state(now, {"rms": 0}))
    m.authorized(manager_authorize(now, {"rms": 20}, {"EXPWY_RMS": 10}), now)
    seen.add(m.authorization_state(now, {"rms": 20}))
    seen.add(m.authorization_state(now + 90 * DAY, {"rms": 20}))
    assert seen == set(smart.AUTHORIZATION_STATES) - {smart.NOT_APPLICABLE}


def test_s7_a_year_of_renewals_authorization_every_30_days_id_every_6_months():
    """S7: authorization renewed every 30 days, the ID certificate every 6 months, usage every 6 hours
    (S11), over a simulated year with the manager always reachable: never expired."""
    m = SmartMachine()
    m.start_evaluation(T0)
    lab = Lab(m)
    m.request_registration("tok", T0)
    lab.run_until(T0 + 365 * DAY)
    auths = [t for t, a, ok in lab.log if a == AUTHORIZE]
    renews = [t for t, a, ok in lab.log if a == RENEW_ID]
    usages = [t for t, a, ok in lab.log if a == REPORT_USAGE]
    assert len(auths) == 13 and all(b - a == pytest.approx(30 * DAY) for a, b in zip(auths, auths[1:]))
    assert renews == [pytest.approx(T0 + 180 * DAY), pytest.approx(T0 + 360 * DAY)]
    assert len(usages) == 365 * 4 + 1
    for day in range(0, 365, 5):
        now = T0 + day * DAY
        assert m.registration_state(now) == smart.REGISTERED
        assert m.authorization_state(now, {"rms": 1}) == smart.AUTHORIZED


def test_s7_authorization_expires_after_90_days_without_contact_and_is_retried_every_15_minutes():
    """S7 + S9: the manager unreachable: authorization retried every 15 minutes, failing alarm at
    once, expired (alarm) after 90 days; contact again authorizes."""
    m = SmartMachine()
    lab = Lab(m)
    m.request_registration("tok", T0)
    lab.run_until(T0 + 1)
    lab.reachable = False
    lab.run_until(T0 + 31 * DAY)
    failures = [t for t, a, ok in lab.log if a == AUTHORIZE and not ok]
    assert failures[0] == pytest.approx(T0 + 30 * DAY)
    assert failures[1] - failures[0] == pytest.approx(15 * 60)
    assert smart.ALARM_AUTH_FAILING in m.effects(T0 + 31 * DAY).alarms
    assert m.authorization_state(T0 + 89 * DAY, {"rms": 1}) == smart.AUTHORIZED
    assert m.authorization_state(T0 + 90 * DAY, {"rms": 1}) == smart.AUTH_EXPIRED
    assert smart.ALARM_AUTH_EXPIRED in m.effects(T0 + 90 * DAY).alarms
    lab.reachable = True
    lab.run_until(T0 + 91 * DAY)
    assert m.authorization_state(T0 + 91 * DAY, {"rms": 1}) == smart.AUTHORIZED
    assert not m.effects(T0 + 91 * DAY).alarms


def test_s7_renew_now_and_s14_hostname_sent_on_renewal():
    """S7: authorization and registration renewed on the spot; S14: the renewal sends the hostname."""
    m = SmartMachine()
    with pytest.raises(SmartRefused, match="S7"):
        m.renew_authorization_now(T0)
    lab = Lab(m)
    m.request_registration("tok", T0)
    lab.run_until(T0 + 1)
    m.renew_authorization_now(T0 + 10)
    assert m.next_action(T0 + 10) == (AUTHORIZE, T0 + 10)
    lab.run_until(T0 + 10)
    m.renew_registration_now(T0 + 20)
    assert m.next_action(T0 + 20) == (RENEW_ID, T0 + 20)
    m.registered_with(manager_register(T0 + 20), T0 + 20, hostname="meter-renamed")
    assert m.s.hostname == "meter-renamed" and m.s.registered_at == T0  # same registration


def test_s8_deregister_returns_to_what_remains_of_the_evaluation():
    """S8: deregistering clears the registration and resumes the evaluation where it stopped; if the
    manager was not told, the state says so (remove the instance there by hand)."""
    m = SmartMachine()
    m.start_evaluation(T0)
    lab = Lab(m)
    m.request_registration("tok", T0 + 10 * DAY)
    lab.run_until(T0 + 10 * DAY)
    assert m.evaluation_left(T0 + 50 * DAY) == pytest.approx(80 * DAY)  # paused while registered
    m.deregistered(T0 + 50 * DAY, manager_told=False)
    assert m.s.deregistered_unreported and m.registration_state(T0 + 50 * DAY) == smart.UNREGISTERED
    assert m.authorization_state(T0 + 50 * DAY) == smart.EVALUATION
    assert m.evaluation_left(T0 + 60 * DAY) == pytest.approx(70 * DAY)
    assert m.next_action(T0 + 60 * DAY) == (None, None)
    assert m.effects(T0 + 131 * DAY).block_registrations  # 80 days after deregistering: S2


def test_s9_unreachable_registration_retried_every_15_minutes_with_the_last_error():
    """S9: a registration that cannot reach the manager is tried again every 15 minutes; the last
    error is kept and raised as an alarm."""
    m = SmartMachine()
    m.start_evaluation(T0)
    lab = Lab(m)
    lab.reachable = False
    m.request_registration("tok", T0)
    lab.run_until(T0 + HOUR)
    attempts = [t for t, a, ok in lab.log if a == REGISTER]
    assert attempts == [T0, T0 + 900, T0 + 1800, T0 + 2700, T0 + 3600]
    assert m.s.attempts[REGISTER]["error"].startswith("manager unreachable")
    assert m.s.attempts[REGISTER]["next"] == T0 + 4500
    assert m.registration_state(T0) == smart.REG_PENDING
    assert "connection refused" in m.effects(T0 + HOUR).alarms[smart.ALARM_REG_FAILING][2]
    lab.reachable = True
    lab.run_until(T0 + 2 * HOUR)
    assert m.registration_state(T0 + 2 * HOUR) == smart.REGISTERED
    assert smart.ALARM_REG_FAILING not in m.effects(T0 + 2 * HOUR).alarms


def test_s10_per_license_type_states():
    """S10: each license type has its own state (Evaluation, Waiting, Authorized, Out of compliance,
    Authorization expired, Evaluation expired, Not authorized, Invalid, Invalid tag)."""
    m = SmartMachine()
    m.start_evaluation(T0)
    use = {"rms": 3, "room": 0, "desktop": 2, "cmr": 0}
    seen = {r["status"] for r in m.tag_states(T0, use).values()}
    seen |= {r["status"] for r in m.tag_states(T0 + 91 * DAY, use).values()}
    m.request_registration("tok", T0 + DAY)
    m.registered_with(manager_register(T0 + DAY), T0 + DAY)
    seen |= {r["status"] for r in m.tag_states(T0 + DAY, use).values()}
    result = manager_authorize(T0 + DAY, {"rms": 3, "room": 0}, {"EXPWY_RMS": 2, "EXPWY_ROOM": 1})
    result["tags"]["EXPWY_CMR"] = {"requested": 0, "authorized": 0, "status": "garbled"}
    result["tags"]["EXPWY_FAX"] = {"requested": 0, "authorized": 0, "status": "authorized"}
    m.authorized(result, T0 + DAY)
    rows = m.tag_states(T0 + DAY, use)
    assert rows["rms"]["status"] == smart.TAG_OUT_OF_COMPLIANCE and rows["room"]["status"] == smart.TAG_AUTHORIZED
    assert rows["desktop"]["status"] == smart.TAG_NOT_AUTHORIZED  # in use, no tag authorized
    assert rows["cmr"]["status"] == smart.TAG_INVALID and rows["EXPWY_FAX"]["status"] == smart.TAG_INVALID_TAG
    seen |= {r["status"] for r in rows.values()}
    seen |= {r["status"] for r in m.tag_states(T0 + 92 * DAY, use).values()}
    assert seen == set(smart.TAG_STATES)


def test_s11_usage_every_6_hours_and_on_demand():
    """S11: usage goes to the manager every 6 hours and when the administrator asks."""
    m = SmartMachine()
    lab = Lab(m)
    m.request_registration("tok", T0)
    lab.run_until(T0 + DAY)
    usages = [t for t, a, ok in lab.log if a == REPORT_USAGE]
    assert usages == [T0, T0 + 6 * HOUR, T0 + 12 * HOUR, T0 + 18 * HOUR, T0 + 24 * HOUR]
    m.update_usage_now(T0 + DAY + 60)
    assert m.next_action(T0 + DAY + 60) == (REPORT_USAGE, T0 + DAY + 60)


def test_s12_the_token_says_whether_export_controlled_functionality_is_allowed():
    """S12: the export-controlled flag comes with the registration."""
    m = SmartMachine()
    m.request_registration("tok", T0)
    assert m.s.export_controlled is None
    m.registered_with(manager_register(T0, export=False), T0)
    assert m.s.export_controlled is False
    m.deregistered(T0 + 1, manager_told=True)
    m.request_registration("tok-x", T0 + 2)
    m.registered_with(manager_register(T0 + 2, export=True), T0 + 2)
    assert m.s.export_controlled is True


def test_s13_state_round_trips_through_a_dict():
    """S13 (its pure part): the whole state survives to_dict/from_dict (the store keeps it)."""
    m = SmartMachine()
    lab = Lab(m)
    m.start_evaluation(T0)
    m.request_registration("tok", T0)
    lab.run_until(T0 + 40 * DAY)
    again = SmartMachine.from_dict(m.to_dict())
    assert again.to_dict() == m.to_dict()
    assert again.next_action(T0 + 40 * DAY) == m.next_action(T0 + 40 * DAY)


def test_p6_capacity_is_what_the_virtual_account_authorizes_and_out_of_compliance_blocks_nothing():
    """P6: registered and authorized, each pooled license's capacity is the virtual account's pool;
    out of compliance raises an alarm and blocks nothing (no limit by count for that license)."""
    m = SmartMachine()
    lab = Lab(m, pool={"EXPWY_RMS": 10, "EXPWY_ROOM": 5})
    m.request_registration("tok", T0)
    lab.run_until(T0 + 1)
    effects = m.effects(T0 + 1, {"rms": 2, "room": 1})
    assert effects.capacity["rms"] == 10 and effects.capacity["room"] == 5
    assert effects.block_registrations == "" and not effects.alarms
    lab.usage = {"rms": 12, "room": 1}
    m.renew_authorization_now(T0 + 2)
    lab.run_until(T0 + 2)
    effects = m.effects(T0 + 2, {"rms": 12, "room": 1})
    assert smart.ALARM_OUT_OF_COMPLIANCE in effects.alarms and "EXPWY_RMS" in effects.alarms[smart.ALARM_OUT_OF_COMPLIANCE][2]
    assert effects.capacity["rms"] == smart.UNLIMITED and effects.capacity["room"] == 5
    assert effects.block_registrations == ""
    lab.pool["EXPWY_RMS"] = 20
    m.renew_authorization_now(T0 + 3)
    lab.run_until(T0 + 3)
    effects = m.effects(T0 + 3, {"rms": 12, "room": 1})
    assert effects.capacity["rms"] == 20 and smart.ALARM_OUT_OF_COMPLIANCE not in effects.alarms


def test_timers_are_settings_and_checked():
    """Every timer is a setting; a non-positive one is refused by name."""
    with pytest.raises(ValueError, match="auth_renew"):
        SmartTimers(auth_renew=0)
    m = SmartMachine(SmartTimers(retry=5.0, usage_interval=60.0))
    lab = Lab(m)
    m.request_registration("tok", T0)
    lab.run_until(T0 + 120)
    assert [t for t, a, ok in lab.log if a == REPORT_USAGE] == [T0, T0 + 60, T0 + 120]


def test_p6_p1_cluster_peers_each_registered_share_the_virtual_accounts_room():
    """P6 with P1 (issue 13 item 6): each peer contributes its usage and an equal share of what the
    pool leaves, so the cluster's summed capacity is the virtual account's pool, not one per peer."""
    pool, usage = 10, {"a": 3, "b": 2}
    # the manager leaves each instance the pool less the other's report
    shares = [smart.cluster_share(pool - usage["b"], usage["a"], 2), smart.cluster_share(pool - usage["a"], usage["b"], 2)]
    assert sum(shares) <= pool and sum(shares) >= pool - 1  # whole licenses: at most one lost to rounding
    assert smart.cluster_share(pool, 0, 1) == pool  # alone: the whole pool
    assert smart.cluster_share(smart.UNLIMITED, 5, 3) == smart.UNLIMITED


def test_s5_s9_an_instance_the_manager_no_longer_knows_is_registration_failed_not_retried():
    """S5/S9: `unknown_instance` (removed in the manager by hand, or its certificate expired there):
    the registration is gone, the state says registration failed, and nothing retries it."""
    m = SmartMachine()
    lab = Lab(m)
    m.request_registration("tok", T0)
    lab.run_until(T0 + 1)
    assert m.failed(AUTHORIZE, "unknown_instance: register again", T0 + 2, code="unknown_instance") is None
    assert m.registration_state(T0 + 2) == smart.REG_FAILED and not m.s.instance_id
    assert m.next_action(T0 + 2) == (None, None)
    assert "unknown_instance" in m.effects(T0 + 2).alarms[smart.ALARM_REG_FAILING][2]
