"""The REST API v1 of a running node (contract B, issue 12 item 4): option keys through the API with
the verifier's reason on refusal (K1, K4), the token on every state change, the peaks reset, and
/metrics behind HTTP basic auth scraped by a real Prometheus with `basic_auth`."""

from __future__ import annotations

import json
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from meter.licensing.keys import issue_key
from tests.integration.peers import MeterProcess, PrometheusProcess

pytestmark = pytest.mark.integration


def call(url: str, *, method: str = "GET", body=None, token: str | None = None, headers: dict | None = None):
    """(status, headers, JSON or text body)."""
    data = None if body is None else json.dumps(body).encode()
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status, hdrs, raw = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as err:
        status, hdrs, raw = err.code, err.headers, err.read()
    if hdrs.get("Content-Type", "").startswith("application/json") and raw:
        return status, hdrs, json.loads(raw)
    return status, hdrs, raw.decode()


@pytest.fixture
def node(tmp_path):
    meter = MeterProcess(tmp_path / "node", licensing={"enforcement": "enforce"}).start()
    yield meter
    assert meter.stop() == 0, meter.log_tail()


def issuer(node: MeterProcess):
    return load_pem_private_key((node.state_dir / "issuer-ed25519.pem").read_bytes(), None)


def test_k1_k4_keys_added_through_the_api_the_66th_is_listed_added_not_processed(node):
    token = (node.state_dir / "admin-token").read_text().strip()
    serial = call(node.url("/api/v1/option-keys"))[2]["serial"]
    private = issuer(node)
    url = node.url("/api/v1/option-keys")
    for i in range(66):
        key = issue_key(private, serial=serial, option="RMS", quantity=1, issued_at=time.time())
        status, _, doc = call(url, method="POST", body={"key": key}, token=token)
        assert status == 201, doc
        assert doc["index"] == i + 1  # the next free place, beyond 64 too (K4)
    assert doc["status"] == "added_not_processed" and any("K4" in w for w in doc["warnings"])
    items = call(url)[2]["items"]
    assert [k["status"] for k in items[:65]] == ["active"] * 65
    assert items[65]["status"] == "added_not_processed"
    assert call(node.url("/api/v1/licenses"))[2]["licenses"]["rms"]["capacity"] == 65  # the 66th grants nothing

    assert call(node.url("/api/v1/option-keys/66"), method="DELETE", token=token)[0] == 204
    status, _, doc = call(node.url("/api/v1/option-keys/66"), method="DELETE", token=token)
    assert status == 404 and doc == {"error": "no option key at index 66"}
    assert len(call(url)[2]["items"]) == 65


def test_k1_a_refused_key_gets_400_with_the_verifiers_reason_and_state_changes_need_the_token(node, tmp_path):
    token = (node.state_dir / "admin-token").read_text().strip()
    url = node.url("/api/v1/option-keys")
    serial = call(url)[2]["serial"]
    key = issue_key(issuer(node), serial=serial, option="ROOM", quantity=3, issued_at=time.time())

    status, hdrs, doc = call(url, method="POST", body={"key": key})
    assert status == 401 and hdrs["WWW-Authenticate"] == 'Bearer realm="meter"'  # loopback too
    assert call(url)[2]["items"] == []

    other = issue_key(load_pem_private_key(_fresh_issuer_pem(), None), serial=serial, option="ROOM", quantity=3,
                      issued_at=time.time())
    status, _, doc = call(url, method="POST", body={"key": other}, token=token)
    assert status == 400 and doc["error"].startswith("forged:")
    elsewhere = issue_key(issuer(node), serial="MTR-OTHER-1", option="ROOM", quantity=3, issued_at=time.time())
    status, _, doc = call(url, method="POST", body={"key": elsewhere}, token=token)
    assert status == 400 and doc["error"].startswith("other_serial:")
    for body in ({"key": ""}, {"nokey": 1}, ["x"]):
        status, _, doc = call(url, method="POST", body=body, token=token)
        assert status == 400 and "key" in doc["error"]
    status, _, doc = call(url, method="POST", body={"key": key}, token=token)
    assert status == 201 and doc["index"] == 1 and doc["status"] == "active"
    assert call(node.url("/api/v1/licenses"))[2]["licenses"]["room"]["capacity"] == 3  # in force at once


def test_usage_peaks_reset_is_a_state_change_and_answers_when(node):
    token = (node.state_dir / "admin-token").read_text().strip()
    url = node.url("/api/v1/usage/reset-peaks")
    assert call(url, method="POST")[0] == 401
    status, _, doc = call(url, method="POST", token=token)
    assert status == 200 and doc["reset_at"] > 0
    usage = call(node.url("/api/v1/usage"))[2]
    assert usage["licenses"]["rms"]["reset_at"] == doc["reset_at"]
    assert usage["peers"][0]["node"] == "meter-test" and "rms" in usage["cluster"]
    assert "usage.peaks_reset" in node.log_path.read_text()


def test_protect_reads_puts_api_reads_behind_the_token_on_loopback(tmp_path):
    meter = MeterProcess(tmp_path / "closed", admin={"protect_reads": True}).start()
    try:
        token = (meter.state_dir / "admin-token").read_text().strip()
        assert call(meter.url("/api/v1/status"))[0] == 401
        assert call(meter.url("/api/registrations"))[0] == 401  # the old paths alike
        assert call(meter.url("/api/v1/status"), token=token)[0] == 200
        assert call(meter.url("/api/v1/openapi.json"))[0] == 200
        assert call(meter.url("/"))[0] == 200  # the pages load; their script sends the token
    finally:
        meter.stop()


def test_metrics_basic_auth_scraped_by_prometheus_with_basic_auth(tmp_path):
    (tmp_path / "metrics-password").write_text("scrape-s3cret\n")
    meter = MeterProcess(tmp_path / "node", admin={"metrics_user": "prom",
                                                   "metrics_password_file": str(tmp_path / "metrics-password")})
    meter.start()
    prom = PrometheusProcess(tmp_path / "prom", [])
    (tmp_path / "prom-password").write_text("scrape-s3cret")
    (tmp_path / "prom" / "prometheus.yml").write_text(textwrap.dedent(f"""\
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: right
            basic_auth: {{username: prom, password_file: {tmp_path / 'prom-password'}}}
            static_configs: [{{targets: ["127.0.0.1:{meter.admin_port}"]}}]
          - job_name: wrong
            basic_auth: {{username: prom, password: nope}}
            static_configs: [{{targets: ["127.0.0.1:{meter.admin_port}"]}}]
        """))
    prom.start()
    try:
        status, hdrs, _ = call(meter.url("/metrics"))
        assert status == 401 and hdrs["WWW-Authenticate"].startswith("Basic ")
        prom.wait_value('up{job="right"}', 1.0)
        prom.wait_value('up{job="wrong"}', 0.0)
        prom.wait_value('meter_licenses_capacity{job="right",license="room"}', 0.0)
    finally:
        prom.stop()
        meter.stop()


def test_a_metrics_user_without_a_password_file_is_a_config_error_naming_both(tmp_path):
    from meter.config import ConfigError, parse

    with pytest.raises(ConfigError, match="metrics_password_file"):
        parse('[admin]\nmetrics_user = "prom"\n')


def _fresh_issuer_pem() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
