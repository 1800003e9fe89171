"""The node's Smart Licensing agent (meter.smart) against the real lab manager (`meter ssm serve`) and
a real authenticating proxy (tinyproxy): registration, renewals, deregistration, and every error a
lab can act on, each provoked for real (S3, S4, S7, S8, S9, S12, S13, S14)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from meter.licensing import smart
from meter.smart.agent import SmartAgent
from meter.smart.settings import SmartSettings
from meter.store.licensing import backup_state, restore_state
from meter.store.node_licensing import NodeLicensing
from tests.integration.smartlab import Manager, Proxy, free_port
from tests.integration.tlsca import TestCA

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    manager = Manager(tmp_path_factory.mktemp("ssm") / "state")
    yield manager
    manager.stop()


def node(tmp_path, manager: Manager | None, *, name="node", ca_file=None, url=None, **settings):
    licensing = NodeLicensing.open(tmp_path / name)
    licensing.switch_to_smart(0.0)
    base = url or (manager.base if manager else "https://127.0.0.1:9/SmartTransport")
    agent = SmartAgent(SmartSettings(direct_url=base, ca_file=str(ca_file or manager.ca), hostname="expe-1.lab",
                                     timeout=settings.pop("timeout", 5.0), **settings), licensing)
    return agent


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def closing(agent, coro):
    try:
        return await coro
    finally:
        if agent._session:
            await agent._session.close()
            agent._session = None


def test_s3_s12_register_authorize_report_and_s8_deregister_returns_entitlements(lab, tmp_path):
    """S3: a token registers the node; S12 the export flag comes with it; S6/S7 authorization and S11
    usage go through; S8: deregistering hands the entitlements back (the manager forgets the instance)."""
    va = lab.account(rms=10, room=5)
    agent = node(tmp_path, lab)

    async def scenario():
        outcome = await agent.register(lab.token(va, "--export-controlled"))
        assert outcome["ok"], outcome
        await agent.step(agent.clock())  # authorization and usage are due at once
        await agent.step(agent.clock())
        view = agent.view()
        assert view["registration"]["status"] == smart.REGISTERED and view["virtual_account"] == va
        assert view["export_controlled"] is True
        assert view["authorization"]["status"] in (smart.AUTHORIZED, smart.NO_LICENSES_IN_USE)
        rows = {r["license"]: r for r in view["usage"]}
        assert rows["rms"]["pool"] == 10 and rows["rms"]["status"] == smart.TAG_AUTHORIZED
        assert agent.effects(agent.clock()).capacity["rms"] == 10  # P6
        assert (await agent.update_usage())["ok"] and agent.view()["usage_reported_at"]
        instances = [i for i in lab.show()["instances"] if i.get("virtual_account") == va]
        assert instances and instances[0]["hostname"] == "expe-1.lab"
        done = await agent.deregister()
        assert done["ok"] and done["manager_told"], done
        assert agent.view()["registration"]["status"] == smart.UNREGISTERED
        assert not [i for i in lab.show()["instances"] if i.get("virtual_account") == va and i.get("registered", True)
                    and i.get("state", "registered") == "registered"]

    run(closing(agent, scenario()))


@pytest.mark.parametrize("case", ["token_invalid", "token_expired", "token_used_up"])
def test_s5_token_errors_say_what_to_do_and_registration_failed(lab, tmp_path, case):
    """S5 'registration failed (token invalid or expired)': the manager's refusal, named, with what to
    do; no retry of a token that cannot work."""
    va = lab.account(rms=1)
    agent = node(tmp_path, lab)

    async def scenario():
        if case == "token_invalid":
            token = "not-a-token"
        elif case == "token_expired":
            token = lab.token(va, "--expires-days", "0.000001")
            await asyncio.sleep(0.5)
        else:
            token = lab.token(va, "--max-uses", "1")
            other = node(tmp_path, lab, name="other")
            assert (await closing(other, other.register(token)))["ok"]
        outcome = await agent.register(token)
        assert not outcome["ok"] and outcome["code"] == case and outcome["next_attempt"] is None
        assert "token" in outcome["error"] and ("new token" in outcome["error"] or "copy it again" in outcome["error"])
        assert agent.view()["registration"]["status"] == smart.REG_FAILED
        assert smart.ALARM_REG_FAILING in agent.effects(agent.clock()).alarms

    run(closing(agent, scenario()))


def test_s9_manager_refusing_connections_named_and_retried_in_15_minutes(tmp_path, lab):
    """S9: connection refused: 'manager unreachable ... connection refused', next attempt 15 min on."""
    agent = node(tmp_path, lab, url=f"https://127.0.0.1:{free_port()}/SmartTransport")

    async def scenario():
        before = agent.clock()
        outcome = await agent.register("any-token")
        assert not outcome["ok"] and outcome["code"] == "unreachable"
        assert "manager unreachable" in outcome["error"] and "connection refused" in outcome["error"]
        assert outcome["next_attempt"] == pytest.approx(before + 900, abs=5)
        assert agent.view()["registration"]["status"] == smart.REG_PENDING
        assert agent.view()["registration"]["last_attempt"]["error"] == outcome["error"]

    run(closing(agent, scenario()))


def test_s9_manager_not_answering_times_out_named(tmp_path, lab):
    """S9: a manager that accepts and never answers: 'no answer ... within N s', retried later."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    port = silent.getsockname()[1]
    agent = node(tmp_path, lab, url=f"https://127.0.0.1:{port}/SmartTransport", timeout=1.0)
    try:
        outcome = run(closing(agent, agent.register("any-token")))
    finally:
        silent.close()
    assert outcome["code"] == "unreachable" and "no answer" in outcome["error"] and "within 1 s" in outcome["error"]
    assert outcome["next_attempt"] is not None


def test_tls_failure_names_the_certificate_issuer(tmp_path, lab):
    """A wrong CA (or an intercepting proxy): the error names who issued the certificate presented."""
    other_ca = TestCA(tmp_path / "other-ca")
    agent = node(tmp_path, lab, ca_file=other_ca.ca)
    outcome = run(closing(agent, agent.register("any-token")))
    assert outcome["code"] == "tls" and "TLS failure" in outcome["error"]
    issuer = lab.ca.read_text()  # the manager's CA issued it: its name is in the message
    from cryptography import x509

    name = x509.load_pem_x509_certificate(issuer.encode()).subject.rfc4514_string()
    assert name in outcome["error"], outcome["error"]


def test_tls_certificate_host_mismatch_named(tmp_path):
    """The manager's certificate is not for the name the node dials: said as a host mismatch."""
    manager = Manager(tmp_path / "ssm-named", hostnames=["ssm.lab"])
    try:
        agent = node(tmp_path, manager)  # dials 127.0.0.1, the certificate says ssm.lab
        outcome = run(closing(agent, agent.register("any-token")))
    finally:
        manager.stop()
    assert outcome["code"] == "tls_host", outcome
    assert "host mismatch" in outcome["error"] and "127.0.0.1" in outcome["error"]


def test_clock_skew_over_one_hour_named(tmp_path):
    """The manager's clock two hours off: 'clock skew', with what to fix."""
    manager = Manager(tmp_path / "ssm-skew", clock_offset=7200)
    try:
        va = manager.account(rms=1)
        agent = node(tmp_path, manager)
        outcome = run(closing(agent, agent.register(manager.token(va))))
    finally:
        manager.stop()
    assert outcome["code"] == "clock_skew" and "more than one hour" in outcome["error"]
    assert agent.view()["registration"]["status"] == smart.REG_PENDING  # retried: the clock may be fixed


def test_s8_deregister_with_the_manager_unreachable_clears_locally_and_says_remove_it_there(tmp_path):
    """S8: the manager down at deregistration: cleared locally, and the lab is told to remove the
    instance in the manager by hand."""
    manager = Manager(tmp_path / "ssm-down")
    va = manager.account(rms=2)
    agent = node(tmp_path, manager)

    async def scenario():
        assert (await agent.register(manager.token(va)))["ok"]
        manager.stop()
        done = await agent.deregister()
        assert done["deregistered"] and not done["manager_told"]
        assert "remove this product instance" in done["notice"] and "(S8)" in done["notice"]
        view = agent.view()
        assert view["registration"]["status"] == smart.UNREGISTERED and view["deregistered_unreported"]
        assert "by hand" in view["notice"]

    run(closing(agent, scenario()))


def test_s4_transport_change_refused_while_registered(tmp_path, lab):
    """S4: Direct -> On-Prem while registered is refused: deregister first."""
    va = lab.account(rms=1)
    agent = node(tmp_path, lab)

    async def scenario():
        assert (await agent.register(lab.token(va)))["ok"]
        with pytest.raises(smart.SmartRefused, match="S4.*deregister first"):
            agent.set_transport({"kind": "onprem", "url": "https://ssm.lab/SmartTransport"})
        assert (await agent.deregister())["ok"]
        assert agent.set_transport({"kind": "onprem", "url": lab.base})["kind"] == "onprem"
        assert (await agent.register(lab.token(va)))["ok"]  # On-Prem: the same manager by its URL

    run(closing(agent, scenario()))


def test_s4_proxy_transport_through_authenticating_tinyproxy(tmp_path, lab):
    """S4 Proxy: host, port, user, password over HTTP CONNECT with basic auth (tinyproxy); a wrong
    password is a 407 said as such."""
    proxy = Proxy(tmp_path / "proxy")
    va = lab.account(rms=3)
    agent = node(tmp_path, lab)
    bad = node(tmp_path, lab, name="bad")
    try:
        async def scenario():
            wrong = {"kind": "proxy", "host": "127.0.0.1", "port": proxy.port, "user": proxy.user, "password": "nope"}
            outcome = await closing(bad, bad.register(lab.token(va), wrong))
            assert outcome["code"] == "proxy", outcome
            assert "proxy user name and password" in outcome["error"]
            right = dict(wrong, password=proxy.password)
            outcome = await agent.register(lab.token(va), right)
            assert outcome["ok"], outcome
            assert agent.view()["transport"]["password"] == "********"
            assert (await agent.renew_authorization())["ok"]

        run(closing(agent, scenario()))
    finally:
        proxy.stop()
    assert "CONNECT" in proxy.log()


def test_s14_renew_registration_sends_the_new_hostname(tmp_path, lab):
    """S14: after a hostname change, 'renew registration now' pushes the new name to the manager."""
    va = lab.account(rms=1)
    agent = node(tmp_path, lab)

    async def scenario():
        assert (await agent.register(lab.token(va)))["ok"]
        agent.settings = SmartSettings(direct_url=lab.base, ca_file=str(lab.ca), hostname="expe-renamed.lab")
        assert (await agent.renew_registration())["ok"]

    run(closing(agent, scenario()))
    names = [i["hostname"] for i in lab.show()["instances"] if i.get("virtual_account") == va]
    assert names == ["expe-renamed.lab"]
    assert agent.view()["hostname"] == "expe-renamed.lab"


def test_s13_backup_restored_on_the_same_system_keeps_registration_on_another_must_register(tmp_path, lab):
    """S13: a backup put back where it came from keeps Smart mode and the registration; on another
    system (no instance key there) Smart mode only, and a fresh token is needed."""
    va = lab.account(rms=1)
    agent = node(tmp_path, lab, name="a")
    assert run(closing(agent, agent.register(lab.token(va))))["ok"]
    agent.store.close()
    agent.licensing.close()
    backup, _ = backup_state(tmp_path / "a", tmp_path / "backup.sqlite")

    restore_state(backup, tmp_path / "a", force=True)  # same system: its instance key is still there
    same = SmartAgent(SmartSettings(direct_url=lab.base, ca_file=str(lab.ca)), NodeLicensing.open(tmp_path / "a"))
    assert same.view()["registration"]["status"] == smart.REGISTERED and same.licensing.smart
    assert run(closing(same, same.renew_authorization()))["ok"]

    restore_state(backup, tmp_path / "b")  # another system
    other = SmartAgent(SmartSettings(direct_url=lab.base, ca_file=str(lab.ca)), NodeLicensing.open(tmp_path / "b"))
    view = other.view()
    assert other.licensing.smart and view["registration"]["status"] == smart.UNREGISTERED
    assert "S13" in view["notice"] and "new token" in view["notice"]
