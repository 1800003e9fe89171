"""The lab Smart Software Manager as a real process: `meter ssm init`, the admin CLI on its state
directory, `meter ssm serve` over HTTPS, and contract C driven by a real aiohttp client that
trusts only the CA the manager made (docs/smart-protocol.md; rules S3, S7, S8, S12).

The server runs with time_factor 86400 (a simulated day per real second), so a 30-day token
lives 30 s and a one-day token expires while the test waits for it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.tlsca import TestCA

pytestmark = pytest.mark.integration
TIME_FACTOR = 86400.0


def meter(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "meter", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"meter {' '.join(args)} failed ({done.returncode}): {done.stderr}"
    return done.stdout


class Manager:
    """`meter ssm serve` in its own process; ``url`` is its SmartTransport base."""

    def __init__(self, state: Path, *extra: str) -> None:
        self.state = state
        self.log = open(state / f"serve-{uuid.uuid4().hex[:6]}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meter", "ssm", "serve", "--config", str(state / "ssm.toml"), *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # the one line saying where it serves, or EOF if it died
        if "serving https://" not in line:
            self.stop()
            self.log.seek(0)
            pytest.fail(f"meter ssm serve did not start: {line!r}\n{self.log.read()}")
        self.base = line.split("serving ")[1].split()[0]
        self.root = self.base.rsplit("/SmartTransport", 1)[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    state = tmp_path_factory.mktemp("ssm") / "state"
    meter("ssm", "init", "--state", str(state), "--port", "0")
    config = state / "ssm.toml"
    config.write_text(config.read_text().replace("time_factor = 1.0", f"time_factor = {TIME_FACTOR}"))
    manager = Manager(state)
    yield manager
    manager.stop()


def trusting(ca_pem_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_pem_path))


def new_va(lab: Manager, **pools: int) -> str:
    va = f"VA-{uuid.uuid4().hex[:8]}"
    meter("ssm", "account", "add", "LAB", va, "--state", str(lab.state))
    for tag, qty in pools.items():
        meter("ssm", "pool", "set", va, tag, str(qty), "--state", str(lab.state))
    return va


def new_token(lab: Manager, va: str, *options: str) -> str:
    return meter("ssm", "token", "create", va, "--state", str(lab.state), *options).strip()


class Agent:
    """The node's side of contract C, written here from the contract alone."""

    def __init__(self, session: aiohttp.ClientSession, base: str, hostname: str = "expe-1.lab") -> None:
        self.session = session
        self.base = base
        self.hostname = hostname
        self.serial = uuid.uuid4().hex[:10].upper()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.instance_id: str | None = None

    def csr(self) -> str:
        request = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.hostname)]))
                   .sign(self.key, hashes.SHA256()))
        return request.public_bytes(serialization.Encoding.PEM).decode()

    async def post(self, route: str, body: dict, *, sign: bool = True, sent_at: float | None = None,
                   key=None) -> tuple[int, dict]:
        body = {**body, "sent_at": time.time() if sent_at is None else sent_at}
        raw = json.dumps(body).encode()
        url = f"{self.base}/v1/{route}"
        headers = {"Content-Type": "application/json"}
        if sign:
            path = aiohttp.client.URL(url).path
            message = f"POST\n{path}\n{hashlib.sha256(raw).hexdigest()}".encode()
            signature = (key or self.key).sign(message, ec.ECDSA(hashes.SHA256()))
            headers.update({"X-Instance-Id": self.instance_id or "", "X-Signature": base64.b64encode(signature).decode()})
        async with self.session.post(url, data=raw, headers=headers) as response:
            return response.status, await response.json()

    async def register(self, token: str) -> tuple[int, dict]:
        status, body = await self.post("register", {"token": token, "hostname": self.hostname, "product": "expressway",
                                                    "serial": self.serial, "csr_pem": self.csr()}, sign=False)
        if status == 200:
            self.instance_id = body["instance_id"]
        return status, body


def run(lab: Manager, scenario) -> None:
    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(lab.state / "ca.pem"))) as session:
            await scenario(session)
    asyncio.run(main())


def error_code(answer: tuple[int, dict]) -> str:
    status, body = answer
    assert 400 <= status < 500, answer
    return body["error"]["code"]


def test_s3_s7_s12_register_authorize_usage_compliance_and_s8_deregister(lab):
    """Register with a token (S3, S12 export flag), ID cert from the CA, signed authorize within the
    pool, out of compliance when the virtual account's usage passes the pool, back in compliance
    when the pool grows, and deregister returning the entitlements at once (S8)."""
    va = new_va(lab, rms=5, room=2)
    token = new_token(lab, va, "--export-controlled")

    async def scenario(session):
        first, second = Agent(session, lab.base, "expe-1.lab"), Agent(session, lab.base, "expe-2.lab")
        status, reg = await first.register(token)
        assert status == 200, reg
        assert reg["virtual_account"] == va and reg["smart_account"] == "LAB" and reg["export_controlled"] is True
        ca = x509.load_pem_x509_certificate(reg["ca_cert_pem"].encode())
        assert ca == x509.load_pem_x509_certificate((lab.state / "ca.pem").read_bytes())
        id_cert = x509.load_pem_x509_certificate(reg["id_cert_pem"].encode())
        id_cert.verify_directly_issued_by(ca)
        assert id_cert.public_key().public_numbers() == first.key.public_key().public_numbers()
        # One year on the manager's compressed clock: 365 real seconds at a day per second.
        assert reg["id_cert_expires_at"] - time.time() == pytest.approx(365 * 86400 / TIME_FACTOR, abs=30)
        assert (await second.register(token))[0] == 200

        status, auth = await first.post("authorize", {"usage": {"EXPWY_RMS": 3, "EXPWY_ROOM": 1}, "hostname": "expe-1.lab"})
        assert status == 200, auth
        assert auth["status"] == "authorized"
        assert auth["tags"]["EXPWY_RMS"] == {"requested": 3, "authorized": 3, "status": "authorized",
                                             "pool": 5, "in_use": 3, "capacity": 5}
        assert auth["expires_at"] - auth["authorized_at"] == pytest.approx(90 * 86400 / TIME_FACTOR)
        assert auth["renew_after"] - auth["authorized_at"] == pytest.approx(30 * 86400 / TIME_FACTOR)

        # The second instance's usage makes the account's sum 3 + 4 = 7 > 5 RMS.
        status, accepted = await second.post("usage", {"usage": {"EXPWY_RMS": 4}})
        assert status == 200 and accepted["accepted_at"] > 0
        status, auth = await first.post("authorize", {"usage": {"EXPWY_RMS": 3, "EXPWY_ROOM": 1}, "hostname": "expe-1.lab"})
        assert auth["status"] == "out_of_compliance"
        assert auth["tags"]["EXPWY_RMS"] == {"requested": 3, "authorized": 1, "status": "out_of_compliance",
                                             "pool": 5, "in_use": 7, "capacity": 1}
        assert auth["tags"]["EXPWY_ROOM"]["status"] == "authorized"
        shown = json.loads(meter("ssm", "show", "--state", str(lab.state)))
        pools = next(a for a in shown["accounts"] if a["virtual_account"] == va)["pools"]
        assert pools["EXPWY_RMS"]["in_use"] == 7 and pools["EXPWY_RMS"]["status"] == "out_of_compliance"

        meter("ssm", "pool", "set", va, "EXPWY_RMS", "8", "--state", str(lab.state))
        status, auth = await first.post("authorize", {"usage": {"EXPWY_RMS": 3, "EXPWY_ROOM": 1}, "hostname": "expe-1.lab"})
        assert auth["status"] == "authorized" and auth["tags"]["EXPWY_RMS"]["authorized"] == 3

        status, gone = await second.post("deregister", {})
        assert status == 200 and gone == {"returned": {"EXPWY_RMS": 4}}
        async with session.get(f"{lab.root}/admin/state",
                               headers={"Authorization": f"Bearer {(lab.state / 'admin-token').read_text().strip()}"}) as r:
            state = await r.json()
        pools = next(a for a in state["accounts"] if a["virtual_account"] == va)["pools"]
        assert pools["EXPWY_RMS"]["in_use"] == 3 and pools["EXPWY_RMS"]["available"] == 5
        assert second.instance_id not in [i["instance_id"] for i in state["instances"]]
        assert error_code(await second.post("usage", {"usage": {}})) == "unknown_instance"

    run(lab, scenario)


def test_s3_token_refusals_invalid_expired_used_up_revoked(lab):
    """Every token refusal of contract C, each provoked for real (S3, S5 "registration failed")."""
    va = new_va(lab, rms=1)
    used_once = new_token(lab, va, "--max-uses", "1")
    revoked = new_token(lab, va)
    meter("ssm", "token", "revoke", revoked, "--state", str(lab.state))
    one_day = new_token(lab, va, "--expires-days", "1")  # one real second at a day per second

    async def scenario(session):
        assert error_code(await Agent(session, lab.base).register("no-such-token")) == "token_invalid"
        assert (await Agent(session, lab.base).register(used_once))[0] == 200
        assert error_code(await Agent(session, lab.base).register(used_once)) == "token_used_up"
        assert error_code(await Agent(session, lab.base).register(revoked)) == "token_revoked"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tokens = json.loads(meter("ssm", "token", "list", "--state", str(lab.state)))
            if next(t for t in tokens if t["token"] == one_day)["status"] == "expired":
                break
            await asyncio.sleep(0.5)
        assert error_code(await Agent(session, lab.base).register(one_day)) == "token_expired"

    run(lab, scenario)


def test_signed_requests_refuse_bad_signature_unknown_instance_clock_skew_and_bad_request(lab):
    """Contract C's checks on every signed request: the ID certificate's key (bad_signature), a
    registered instance (unknown_instance), the clock within an hour (clock_skew), the fields (bad_request)."""
    va = new_va(lab, desktop=3)
    token = new_token(lab, va)

    async def scenario(session):
        agent = Agent(session, lab.base)
        assert (await agent.register(token))[0] == 200
        other_key = ec.generate_private_key(ec.SECP256R1())
        assert error_code(await agent.post("usage", {"usage": {"EXPWY_DESKTOP": 1}}, key=other_key)) == "bad_signature"
        stranger = Agent(session, lab.base)
        stranger.instance_id = uuid.uuid4().hex
        assert error_code(await stranger.post("authorize", {"usage": {}, "hostname": "x"})) == "unknown_instance"
        assert error_code(await agent.post("usage", {"usage": {}}, sent_at=time.time() - 7200)) == "clock_skew"
        assert error_code(await agent.post("usage", {"usage": {"EXPWY_BOGUS": 1}})) == "bad_request"
        assert error_code(await agent.post("usage", {"usage": {"EXPWY_RMS": -1}})) == "bad_request"
        status, body = await Agent(session, lab.base).register("")
        assert error_code((status, body)) == "token_invalid"
        # A body altered after signing no longer verifies.
        raw = json.dumps({"usage": {"EXPWY_DESKTOP": 1}, "sent_at": time.time()}).encode()
        path = f"{lab.base}/v1/usage"
        message = f"POST\n{aiohttp.client.URL(path).path}\n{hashlib.sha256(raw).hexdigest()}".encode()
        signature = base64.b64encode(agent.key.sign(message, ec.ECDSA(hashes.SHA256()))).decode()
        tampered = raw.replace(b"1}", b"9}")
        async with session.post(path, data=tampered, headers={"X-Instance-Id": agent.instance_id,
                                                               "X-Signature": signature}) as response:
            assert response.status == 401 and (await response.json())["error"]["code"] == "bad_signature"
        async with session.post(path, data=raw, headers={"X-Instance-Id": agent.instance_id,
                                                         "X-Signature": signature}) as response:
            assert response.status == 200
        # S14: renew-id pushes the new hostname and certifies a new key.
        agent.hostname = "renamed.lab"
        old_key, agent.key = agent.key, ec.generate_private_key(ec.SECP256R1())
        status, renewed = await agent.post("renew-id", {"csr_pem": agent.csr(), "hostname": "renamed.lab"}, key=old_key)
        assert status == 200 and renewed["instance_id"] == agent.instance_id
        instances = json.loads(meter("ssm", "instances", "--state", str(lab.state)))
        assert next(i for i in instances if i["instance_id"] == agent.instance_id)["hostname"] == "renamed.lab"
        assert error_code(await agent.post("usage", {"usage": {}}, key=old_key)) == "bad_signature"
        assert (await agent.post("usage", {"usage": {}}))[0] == 200

    run(lab, scenario)


def test_a_manager_whose_clock_is_off_refuses_with_clock_skew(lab):
    """The manager's own `--clock-offset` (a manager two hours ahead) refuses a correct client."""
    va = new_va(lab, rms=1)
    token = new_token(lab, va)
    skewed = Manager(lab.state, "--clock-offset", "7200")
    try:
        async def scenario(session):
            agent = Agent(session, skewed.base)
            assert error_code(await agent.register(token)) == "clock_skew"
            agent.base = lab.base
            assert (await agent.register(token))[0] == 200
        run(lab, scenario)
    finally:
        skewed.stop()


def test_a_client_trusting_another_ca_fails_the_tls_handshake(lab, tmp_path):
    other = TestCA(tmp_path / "other-ca")

    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(other.ca))) as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.post(f"{lab.base}/v1/register", json={"sent_at": time.time()})
    asyncio.run(main())


def test_admin_api_needs_its_bearer_token_and_the_page_shows_compliance(lab):
    va = new_va(lab)
    token = (lab.state / "admin-token").read_text().strip()

    async def scenario(session):
        async with session.get(f"{lab.root}/admin/state") as response:
            assert response.status == 401
        async with session.get(f"{lab.root}/admin/state", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        auth = {"Authorization": f"Bearer {token}"}
        async with session.put(f"{lab.root}/admin/pools/{va}/EXPWY_CMR", json={"quantity": 4}, headers=auth) as response:
            assert response.status == 200 and (await response.json())["quantity"] == 4
        async with session.put(f"{lab.root}/admin/pools/{va}/EXPWY_NOPE", json={"quantity": 4}, headers=auth) as response:
            assert response.status == 400 and "unknown tag" in (await response.json())["error"]
        async with session.post(f"{lab.root}/admin/tokens", json={"virtual_account": va, "max_uses": 2},
                                headers=auth) as response:
            created = await response.json()
            assert response.status == 201 and created["status"] == "active" and created["max_uses"] == 2
        async with session.get(f"{lab.root}/admin/ca-cert", headers=auth) as response:
            assert (await response.text()) == (lab.state / "ca.pem").read_text()
        async with session.get(f"{lab.root}/") as response:
            page = await response.text()
            assert response.status == 200 and va in page and "EXPWY_CMR" in page
            assert created["token"] not in page  # only its first characters are shown

    run(lab, scenario)


def test_s3_transfer_by_cli_and_admin_api_moves_usage_between_virtual_accounts(lab):
    """S3: the lab admin moves an instance to another virtual account; its usage counts there."""
    source, target = new_va(lab, rms=2), new_va(lab, rms=1)
    token = new_token(lab, source)
    admin = {"Authorization": f"Bearer {(lab.state / 'admin-token').read_text().strip()}"}

    async def scenario(session):
        agent = Agent(session, lab.base)
        assert (await agent.register(token))[0] == 200
        status, auth = await agent.post("authorize", {"usage": {"EXPWY_RMS": 2}, "hostname": agent.hostname})
        assert auth["status"] == "authorized"
        meter("ssm", "transfer", agent.instance_id, target, "--state", str(lab.state))
        status, auth = await agent.post("authorize", {"usage": {"EXPWY_RMS": 2}, "hostname": agent.hostname})
        assert auth["status"] == "out_of_compliance" and auth["tags"]["EXPWY_RMS"]["pool"] == 1
        async with session.post(f"{lab.root}/admin/instances/{agent.instance_id}/transfer",
                                json={"virtual_account": source}, headers=admin) as response:
            assert response.status == 200
        async with session.post(f"{lab.root}/admin/instances/{agent.instance_id}/transfer",
                                json={"virtual_account": "VA-none"}, headers=admin) as response:
            assert response.status == 404 and "no virtual account" in (await response.json())["error"]
        status, auth = await agent.post("authorize", {"usage": {"EXPWY_RMS": 2}, "hostname": agent.hostname})
        assert auth["status"] == "authorized"

    run(lab, scenario)


def test_the_manager_answers_stray_requests_with_a_json_error_and_keeps_serving(lab):
    async def scenario(session):
        async with session.get(f"{lab.base}/v1/register") as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "bad_request"
        async with session.post(f"{lab.base}/v1/register", data=b"x" * 70000) as response:
            assert response.status == 413 and (await response.json())["error"]["code"] == "bad_request"
        async with session.post(f"{lab.base}/v1/register", data=b"\xff\xfe") as response:
            assert response.status == 400 and (await response.json())["error"]["code"] == "bad_request"
        assert error_code(await Agent(session, lab.base).register("still-serving")) == "token_invalid"

    run(lab, scenario)


def test_serve_says_why_it_cannot_listen(lab, tmp_path):
    port = lab.base.split(":")[2].split("/")[0]
    config = tmp_path / "taken.toml"
    config.write_text(f'[ssm]\nstate_dir = "{lab.state}"\nport = {port}\n')
    done = subprocess.run([sys.executable, "-m", "meter", "ssm", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    config.write_text('[ssm]\nport = "8443"\n')
    done = subprocess.run([sys.executable, "-m", "meter", "ssm", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "[ssm] port: expected a port number" in done.stderr, done.stderr
