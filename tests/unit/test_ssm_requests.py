"""Contract C's checks in the manager (meter/ssm/protocol.py), without HTTP: the signed message,
the clock, the ID certificate's lifetime (S7), the request's fields; and the manager's config,
CA and page."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meter.ssm.ca import CertificateAuthority
from meter.ssm.clock import Clock
from meter.ssm.page import render_page
from meter.ssm.protocol import Protocol, signed_message
from meter.ssm.settings import SettingsError, load
from meter.ssm.state import State

DAY = 86400.0
BASE = "/SmartTransport/v1/"


def csr_pem(key) -> str:
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM).decode()


class Lab:
    def __init__(self, directory, clock: Clock) -> None:
        self.dir = directory
        self.ca = CertificateAuthority.create(directory, clock.now())
        self.state = State(directory)
        self.state.add_account("LAB", "VA1", clock.now())
        self.state.set_pool("VA1", "EXPWY_RMS", 2)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.at(clock)

    def at(self, clock: Clock) -> Protocol:
        self.protocol = Protocol(self.state, self.ca, clock)
        return self.protocol

    def send(self, route: str, body: dict, *, instance: str | None = None, key=None, path: str | None = None,
             sent_at: float | None = None) -> tuple[int, dict]:
        raw = json.dumps({"sent_at": time.time() if sent_at is None else sent_at, **body}).encode()
        path = path or BASE + route
        headers = {}
        if instance:
            signature = (key or self.key).sign(signed_message("POST", path, raw), ec.ECDSA(hashes.SHA256()))
            headers = {"X-Instance-Id": instance, "X-Signature": base64.b64encode(signature).decode()}
        return self.protocol.handle("POST", BASE + route, headers, raw)

    def register(self) -> str:
        token = self.state.create_token("VA1", self.protocol.clock)
        status, body = self.send("register", {"token": token, "hostname": "expe", "product": "expressway",
                                              "serial": "S1", "csr_pem": csr_pem(self.key)})
        assert status == 200, body
        return body["instance_id"]


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path, Clock(time_factor=DAY))
    yield lab
    lab.state.close()


def code(answer: tuple[int, dict]) -> str:
    status, body = answer
    assert 400 <= status < 500, answer
    return body["error"]["code"]


def test_the_signature_covers_method_full_path_and_body_hash(lab):
    instance = lab.register()
    assert lab.send("usage", {"usage": {"EXPWY_RMS": 1}}, instance=instance)[0] == 200
    # Signed over the path without its base: not the message the manager verifies.
    assert code(lab.send("usage", {"usage": {}}, instance=instance, path="/v1/usage")) == "bad_signature"
    raw = b'{"usage": {}, "sent_at": %f}' % time.time()
    assert signed_message("POST", "/SmartTransport/v1/usage", raw) == (
        b"POST\n/SmartTransport/v1/usage\n" + hashlib.sha256(raw).hexdigest().encode())
    unsigned = lab.protocol.handle("POST", BASE + "usage", {"X-Instance-Id": instance}, raw)
    assert code(unsigned) == "bad_signature"
    garbled = lab.protocol.handle("POST", BASE + "usage", {"X-Instance-Id": instance, "X-Signature": "%%%"}, raw)
    assert code(garbled) == "bad_signature"
    assert code(lab.protocol.handle("POST", BASE + "usage", {}, raw)) == "unknown_instance"


def test_clock_skew_over_an_hour_either_way_is_refused_and_within_it_accepted(lab):
    instance = lab.register()
    now = time.time()
    assert code(lab.send("usage", {"usage": {}}, instance=instance, sent_at=now + 3700)) == "clock_skew"
    assert code(lab.send("usage", {"usage": {}}, instance=instance, sent_at=now - 3700)) == "clock_skew"
    assert lab.send("usage", {"usage": {}}, instance=instance, sent_at=now - 3000)[0] == 200
    # A manager whose own clock is two hours ahead refuses a correct sender.
    lab.at(Clock(time_factor=DAY, clock_offset=7200))
    assert code(lab.send("usage", {"usage": {}}, instance=instance)) == "clock_skew"


def test_s7_an_id_certificate_past_its_year_makes_the_instance_unknown_and_renew_id_extends_it(lab):
    instance = lab.register()
    clock = lab.protocol.clock
    # Half a year on (180 real seconds at a day per second), renew-id gives another year.
    lab.at(Clock(DAY, clock.span(200)))
    new_key = ec.generate_private_key(ec.SECP256R1())
    status, renewed = lab.send("renew-id", {"csr_pem": csr_pem(new_key), "hostname": "renamed"},
                               instance=instance, sent_at=lab.protocol.clock.now())
    assert status == 200 and renewed["instance_id"] == instance
    lab.key = new_key
    lab.at(Clock(DAY, clock.span(500)))  # within the renewed year
    assert lab.send("usage", {"usage": {}}, instance=instance, sent_at=lab.protocol.clock.now())[0] == 200
    lab.at(Clock(DAY, clock.span(600)))  # past it
    assert code(lab.send("usage", {"usage": {}}, instance=instance, sent_at=lab.protocol.clock.now())) == "unknown_instance"


def test_bad_requests_get_bad_request_with_a_reason(lab):
    instance = lab.register()
    raw_not_json = lab.protocol.handle("POST", BASE + "register", {}, b"{not json")
    assert code(raw_not_json) == "bad_request" and "not JSON" in raw_not_json[1]["error"]["message"]
    assert code(lab.protocol.handle("POST", BASE + "register", {}, b"[1]")) == "bad_request"
    assert code(lab.protocol.handle("POST", BASE + "register", {}, b'{"token": "x"}')) == "bad_request"  # no sent_at
    assert code(lab.protocol.handle("GET", BASE + "register", {}, b"")) == "bad_request"
    assert code(lab.protocol.handle("POST", BASE + "nothing", {}, b"{}")) == "bad_request"
    token = lab.state.create_token("VA1", lab.protocol.clock)
    fields = {"token": token, "hostname": "e", "product": "expressway", "serial": "S2",
              "csr_pem": csr_pem(ec.generate_private_key(ec.SECP256R1()))}
    for key, value in (("product", "vcs"), ("hostname", ""), ("serial", 7), ("token", None),
                       ("csr_pem", csr_pem(ec.generate_private_key(ec.SECP384R1()))),
                       ("csr_pem", csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))):
        answer = lab.send("register", {**fields, key: value})
        assert code(answer) == "bad_request", (key, answer)
    assert next(t for t in lab.state.tokens(lab.protocol.clock) if t["token"] == token)["uses"] == 0
    assert code(lab.send("authorize", {"usage": {"EXPWY_RMS": "many"}}, instance=instance)) == "bad_request"


def test_settings_name_the_bad_key_in_one_line(tmp_path):
    config = tmp_path / "ssm.toml"
    config.write_text('[ssm]\nstate_dir = "st"\nport = 0\ntime_factor = 86400\nclock_offset = -30\n')
    settings = load(config)
    assert settings.state_dir == tmp_path / "st" and settings.clock == Clock(86400.0, -30.0)
    for text, named in (('[ssm]\nport = "x"\n', "[ssm] port: expected a port number"),
                        ("[ssm]\ntime_factor = 0\n", "[ssm] time_factor: expected a positive number"),
                        ("[ssm]\nhostnames = []\n", "[ssm] hostnames"),
                        ("[ssm]\ncolour = 1\n", "[ssm] colour: unknown key"),
                        ("[node]\n", "unknown section [node]"),
                        ("[ssm\n", "not TOML")):
        config.write_text(text)
        with pytest.raises(SettingsError, match=str(config)) as raised:
            load(config)
        assert named in str(raised.value) and "\n" not in str(raised.value)


def test_the_server_certificate_names_every_configured_host_and_address(tmp_path):
    ca = CertificateAuthority.create(tmp_path, time.time())
    cert_path, _ = ca.issue_server(tmp_path, ["ssm.lab", "127.0.0.1", "::1"], time.time())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["ssm.lab"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    with pytest.raises(Exception, match="already exists"):
        CertificateAuthority.create(tmp_path, time.time())


def test_the_page_escapes_what_the_admin_typed_and_hides_tokens(lab):
    lab.state.add_account("<script>alert(1)</script>", "VA<b>", time.time())
    token = lab.state.create_token("VA1", lab.protocol.clock)
    page = render_page(lab.state.overview(lab.protocol.clock))
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "VA&lt;b&gt;" in page
    assert token not in page and token[:8] in page


def test_nothing_a_client_sends_makes_the_manager_raise(lab):
    """Design principle 6 for the manager: any body, any header, any route gets 200 or a 4xx with a code."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    instance = lab.register()
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                          max_leaves=8)
    keys = st.sampled_from(["token", "hostname", "product", "serial", "csr_pem", "usage", "sent_at", "x"])
    bodies = st.one_of(st.binary(max_size=200), st.dictionaries(keys, values, max_size=6).map(lambda d: json.dumps(d).encode()))
    headers = st.fixed_dictionaries({}, optional={"X-Instance-Id": st.sampled_from([instance, "", "nope", "\x00"]),
                                                  "X-Signature": st.text(max_size=120) | st.binary(max_size=72).map(
                                                      lambda b: base64.b64encode(b).decode())})

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(["register", "renew-id", "authorize", "usage", "deregister", "x"]), headers, bodies)
    def check(route, header, body):
        status, answer = lab.protocol.handle("POST", BASE + route, header, body)
        assert status == 200 or (400 <= status < 500 and answer["error"]["code"]), (status, answer)

    check()
