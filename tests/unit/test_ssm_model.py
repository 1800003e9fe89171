"""The lab manager's model (meter/ssm/state.py) on a real SQLite file: tokens (S3, S12),
compliance per tag from every instance's report (S6, S10, P6), deregistration returning the
entitlements at once (S8), transfer and re-registration to another virtual account (S3).

Time moves by the clock's offset; durations follow its time_factor (a simulated day per second).
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meter.ssm.ca import CAError, CertificateAuthority
from meter.ssm.clock import Clock
from meter.ssm.errors import AdminError, SmartError
from meter.ssm.state import State, check_usage

DAY = 86400.0


@pytest.fixture
def lab(tmp_path):
    clock = Clock(time_factor=DAY)  # one simulated day per real second
    ca = CertificateAuthority.create(tmp_path, clock.now())
    state = State(tmp_path)
    state.add_account("LAB", "VA1", clock.now())
    state.add_account("LAB", "VA2", clock.now())
    yield state, ca, clock
    state.close()


def csr_pem(key=None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM).decode()


def register(state: State, ca: CertificateAuthority, clock: Clock, token: str, serial: str = "S1", csr: str | None = None):
    csr = csr or csr_pem()

    def issue(instance_id: str, expires_at: float) -> str:
        return ca.issue_id_cert(csr, instance_id, clock.now(), expires_at)
    return state.register(token, f"host-{serial}", serial, "expressway", clock, issue)[0]


def later(clock: Clock, days: float) -> Clock:
    """The same manager ``days`` simulated days on."""
    return Clock(clock.time_factor, clock.clock_offset + clock.span(days))


def code_of(call) -> str:
    with pytest.raises(SmartError) as raised:
        call()
    return raised.value.code


def test_s3_token_max_uses_then_used_up(lab):
    state, ca, clock = lab
    token = state.create_token("VA1", clock, max_uses=2)
    register(state, ca, clock, token, "A")
    register(state, ca, clock, token, "B")
    assert code_of(lambda: register(state, ca, clock, token, "C")) == "token_used_up"
    assert next(t for t in state.tokens(clock) if t["token"] == token)["status"] == "used_up"


def test_s3_token_expires_after_its_days_on_the_scaled_clock(lab):
    state, ca, clock = lab
    token = state.create_token("VA1", clock, expires_days=10)
    assert code_of(lambda: register(state, ca, later(clock, 10.5), token)) == "token_expired"
    assert register(state, ca, later(clock, 9), token).virtual_account == "VA1"


def test_s3_token_revoked_and_unknown(lab):
    state, ca, clock = lab
    token = state.create_token("VA1", clock)
    state.revoke_token(token, clock.now())
    assert code_of(lambda: register(state, ca, clock, token)) == "token_revoked"
    assert code_of(lambda: register(state, ca, clock, "nope")) == "token_invalid"
    with pytest.raises(AdminError, match="no such token"):
        state.revoke_token("nope", clock.now())


def test_s3_a_refused_registration_spends_no_token_use(lab):
    state, ca, clock = lab
    token = state.create_token("VA1", clock, max_uses=1)
    garbage = "-----BEGIN CERTIFICATE REQUEST-----\nnot a csr\n-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CAError, match="not a PEM certificate request"):
        register(state, ca, clock, token, csr=garbage)
    assert next(t for t in state.tokens(clock) if t["token"] == token)["uses"] == 0
    register(state, ca, clock, token)


def test_s12_the_token_says_whether_export_controlled_functionality_is_allowed(lab):
    state, ca, clock = lab
    allowed = state.create_token("VA1", clock, export_controlled=True)
    plain = state.create_token("VA1", clock)
    assert register(state, ca, clock, allowed, "A").export_controlled is True
    assert register(state, ca, clock, plain, "B").export_controlled is False


def test_s10_p6_compliance_sums_every_instance_of_the_virtual_account(lab):
    state, ca, clock = lab
    state.set_pool("VA1", "EXPWY_RMS", 5)
    token = state.create_token("VA1", clock)
    first, second = register(state, ca, clock, token, "A"), register(state, ca, clock, token, "B")
    answer = state.authorize(first.instance_id, {"EXPWY_RMS": 3.0}, clock)
    assert answer["status"] == "authorized"
    assert answer["tags"]["EXPWY_RMS"]["pool"] == 5  # P6: the node's capacity is the account's pool
    state.report_usage(second.instance_id, {"EXPWY_RMS": 2.0}, clock.now())
    assert state.compliance("VA1", clock.now())["EXPWY_RMS"]["status"] == "in_compliance"
    state.report_usage(second.instance_id, {"EXPWY_RMS": 2.5}, clock.now())  # half an RMS too many (0.5: C-rules' audio call)
    assert state.compliance("VA1", clock.now())["EXPWY_RMS"]["status"] == "out_of_compliance"
    state.report_usage(second.instance_id, {"EXPWY_RMS": 3.0}, clock.now())
    pool = state.compliance("VA1", clock.now())["EXPWY_RMS"]
    assert pool["in_use"] == 6 and pool["status"] == "out_of_compliance" and pool["available"] == 0
    answer = state.authorize(first.instance_id, {"EXPWY_RMS": 3.0, "EXPWY_ROOM": 0.0}, clock)
    assert answer["status"] == "out_of_compliance"
    assert answer["tags"]["EXPWY_RMS"] == {"requested": 3, "authorized": 2, "status": "out_of_compliance",
                                           "pool": 5, "in_use": 6, "capacity": 2}
    assert answer["tags"]["EXPWY_ROOM"]["status"] == "authorized"  # unused: nothing to be out of
    state.set_pool("VA1", "EXPWY_RMS", 6)
    assert state.authorize(first.instance_id, {"EXPWY_RMS": 3.0}, clock)["status"] == "authorized"


def test_s7_authorization_lasts_90_days_renewed_after_30_on_the_scaled_clock(lab):
    state, ca, clock = lab
    instance = register(state, ca, clock, state.create_token("VA1", clock))
    answer = state.authorize(instance.instance_id, {}, clock)
    assert answer["expires_at"] - answer["authorized_at"] == pytest.approx(90.0)
    assert answer["renew_after"] - answer["authorized_at"] == pytest.approx(30.0)
    assert instance.id_cert_expires_at - instance.registered_at == pytest.approx(365.0)


def test_a_pool_past_its_end_date_counts_zero(lab):
    state, ca, clock = lab
    state.set_pool("VA1", "EXPWY_ROOM", 4, end_at=clock.now() + 100)
    instance = register(state, ca, clock, state.create_token("VA1", clock))
    state.report_usage(instance.instance_id, {"EXPWY_ROOM": 1.0}, clock.now())
    assert state.compliance("VA1", clock.now())["EXPWY_ROOM"]["status"] == "in_compliance"
    ended = state.compliance("VA1", clock.now() + 101)["EXPWY_ROOM"]
    assert ended["ended"] and ended["quantity"] == 0 and ended["status"] == "out_of_compliance"


def test_s8_deregister_returns_the_entitlements_at_once(lab):
    state, ca, clock = lab
    state.set_pool("VA1", "EXPWY_DESKTOP", 10)
    instance = register(state, ca, clock, state.create_token("VA1", clock))
    state.report_usage(instance.instance_id, {"EXPWY_DESKTOP": 7.0, "EXPWY_CMR": 1.0}, clock.now())
    assert state.compliance("VA1", clock.now())["EXPWY_DESKTOP"]["available"] == 3
    assert state.deregister(instance.instance_id, clock.now()) == {"EXPWY_CMR": 1, "EXPWY_DESKTOP": 7}
    assert state.compliance("VA1", clock.now())["EXPWY_DESKTOP"]["available"] == 10
    assert code_of(lambda: state.instance(instance.instance_id)) == "unknown_instance"
    assert code_of(lambda: state.deregister(instance.instance_id, clock.now())) == "unknown_instance"
    assert instance.instance_id not in [i["instance_id"] for i in state.instances()]


def test_s3_transfer_moves_the_instance_and_its_usage_to_another_virtual_account(lab):
    state, ca, clock = lab
    state.set_pool("VA1", "EXPWY_RMS", 2)
    state.set_pool("VA2", "EXPWY_RMS", 2)
    instance = register(state, ca, clock, state.create_token("VA1", clock))
    state.report_usage(instance.instance_id, {"EXPWY_RMS": 2.0}, clock.now())
    state.transfer(instance.instance_id, "VA2")
    assert state.compliance("VA1", clock.now())["EXPWY_RMS"]["in_use"] == 0
    assert state.compliance("VA2", clock.now())["EXPWY_RMS"]["in_use"] == 2
    assert state.instance(instance.instance_id).virtual_account == "VA2"
    with pytest.raises(AdminError, match="no virtual account"):
        state.transfer(instance.instance_id, "VA9")
    with pytest.raises(AdminError, match="no registered product instance"):
        state.transfer("nope", "VA1")


def test_s3_registering_again_with_another_token_moves_the_same_instance(lab):
    state, ca, clock = lab
    first = register(state, ca, clock, state.create_token("VA1", clock), "SERIAL-1")
    state.report_usage(first.instance_id, {"EXPWY_RMS": 1.0}, clock.now())
    again = register(state, ca, clock, state.create_token("VA2", clock), "SERIAL-1")
    assert again.instance_id == first.instance_id and again.virtual_account == "VA2"
    assert again.id_cert_pem != first.id_cert_pem
    assert state.compliance("VA2", clock.now())["EXPWY_RMS"]["in_use"] == 1
    assert len(state.instances()) == 1


def test_usage_replaces_the_last_report_and_bad_usage_is_refused(lab):
    state, ca, clock = lab
    instance = register(state, ca, clock, state.create_token("VA1", clock))
    state.report_usage(instance.instance_id, {"EXPWY_RMS": 2.0, "EXPWY_ROOM": 1.0}, clock.now())
    state.report_usage(instance.instance_id, {"EXPWY_RMS": 1.5}, clock.now())
    assert state.usage_of(instance.instance_id) == {"EXPWY_RMS": 1.5}
    for bad in ({"EXPWY_RMS": -1}, {"EXPWY_RMS": True}, {"EXPWY_RMS": "2"}, {"rms": 1},
                {"EXPWY_RMS": float("nan")}, ["EXPWY_RMS"]):
        assert code_of(lambda: check_usage(bad)) == "bad_request", bad


def test_admin_refusals_name_what_is_wrong(lab):
    state, ca, clock = lab
    with pytest.raises(AdminError, match="exists already"):
        state.add_account("LAB", "VA1", clock.now())
    with pytest.raises(AdminError, match="unknown tag"):
        state.set_pool("VA1", "EXPWY_NOPE", 1)
    with pytest.raises(AdminError, match="non-negative integer"):
        state.set_pool("VA1", "EXPWY_RMS", -1)
    with pytest.raises(AdminError, match="no virtual account"):
        state.create_token("VA9", clock)
    with pytest.raises(AdminError, match="expires-days"):
        state.create_token("VA1", clock, expires_days=400)
    with pytest.raises(AdminError, match="max-uses"):
        state.create_token("VA1", clock, max_uses=0)
    with pytest.raises(AdminError, match="max-uses"):
        state.create_token("VA1", clock, max_uses=2**70)
    with pytest.raises(AdminError, match="non-negative integer"):
        state.set_pool("VA1", "EXPWY_RMS", 2**70)
    with pytest.raises(AdminError, match="expires-days"):
        state.create_token("VA1", clock, expires_days=float("nan"))


def test_s6_s7_the_manager_shows_an_authorization_lapsed_after_90_days_without_contact(lab):
    state, ca, clock = lab
    instance = register(state, ca, clock, state.create_token("VA1", clock))
    assert state.instances(clock.now())[0]["authorization"] == "not_authorized"
    state.authorize(instance.instance_id, {"EXPWY_RMS": 1.0}, clock)
    assert state.instances(later(clock, 89).now())[0]["authorization"] == "authorized"
    lapsed = state.instances(later(clock, 91).now())[0]
    assert lapsed["authorization"] == "authorization_expired" and lapsed["registration"] == "registered"
    assert state.instances(later(clock, 366).now())[0]["registration"] == "registration_expired"
