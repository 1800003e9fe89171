"""The Smart licensing page (/smart) in Debian's Chromium, its API (/api/v1/smart...) and `meter smart
status`, against a running node and the real lab manager (S1, S3, S5-S8, S10, S12; contract B)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.integration.peers import MeterProcess
from tests.integration.smartlab import Manager

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
# Chromium's line for the POST the page expected to be refused (no token yet: 401).
REFUSED = "Failed to load resource: the server responded with a status of 401"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smart-page")
    manager = Manager(tmp / "ssm")
    va = manager.account(rms=4, room=2)
    node = MeterProcess(tmp / "node", extra=f'[smart]\ndirect_url = "{manager.base}"\nca_file = "{manager.ca}"\n'
                                             'hostname = "expe-page.lab"\n')
    node.meter_cli("mode", "smart", "--yes")
    node.start()
    try:
        yield node, manager, va, (node.state_dir / "admin-token").read_text().strip()
    finally:
        node.stop()
        manager.stop()


def request(node, method: str, path: str, body=None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(node.url(path), data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_smart_api_needs_the_token_for_actions_and_names_bad_input(lab):
    """Contract B: every Smart action needs the bearer token (401); a bad body is a 400 with the
    reason; an action the rules refuse is a 409 with the rule; the routes are in the OpenAPI document."""
    node, manager, va, token = lab
    assert request(node, "POST", "/api/v1/smart/register", {"token": "x"})[0] == 401
    assert request(node, "POST", "/api/v1/smart/renew-authorization")[0] == 401
    status, doc = request(node, "POST", "/api/v1/smart/register", {"token": ""}, token)
    assert status == 400 and "token" in doc["error"]
    status, doc = request(node, "POST", "/api/v1/smart/register", b"{not json", token)
    assert status == 400 and "JSON" in doc["error"]
    status, doc = request(node, "POST", "/api/v1/smart/register",
                          {"token": "t", "transport": {"kind": "proxy", "host": "p", "port": 0}}, token)
    assert status == 400 and "proxy port" in doc["error"]
    status, doc = request(node, "POST", "/api/v1/smart/renew-authorization", {}, token)
    assert status == 409 and "S7" in doc["error"]  # not registered
    status, doc = request(node, "GET", "/api/v1/smart")
    assert status == 200 and doc["mode"] == "smart"
    paths = request(node, "GET", "/api/v1/openapi.json")[1]["paths"]
    assert {"/api/v1/smart", "/api/v1/smart/register", "/api/v1/smart/deregister"} <= set(paths)


def test_smart_page_shows_status_registers_renews_and_deregisters(lab, tmp_path):
    """The Maintenance > Smart licensing page: S1 evaluation, register with a token (S3), accounts
    and export flag (S12), dates, attempts, the usage table per license type (S10), renew now (S7),
    deregister after a confirmation (S8); `meter smart status` says the same."""
    node, manager, va, token = lab
    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (apt-get install chromium)"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        try:
            page.goto(node.url("/smart"))
            expect(page.locator("#registration-status")).to_have_text("Unregistered")
            expect(page.locator("#authorization-status")).to_have_text("Evaluation mode")
            expect(page.locator("#evaluation")).to_contain_text("days")
            expect(page.locator("nav a.here")).to_have_text("Smart Licensing")

            page.fill("#reg-token", manager.token(va, "--export-controlled"))
            page.click("#register")  # no admin token yet: refused, said so
            expect(page.locator("#outcome")).to_contain_text("refused")
            page.fill("#token", token)
            page.click("#token-save")
            page.click("#register")
            expect(page.locator("#outcome")).to_contain_text("register: done")
            expect(page.locator("#registration-status")).to_have_text("Registered")
            expect(page.locator("#virtual-account")).to_have_text(va)
            expect(page.locator("#export")).to_have_text("Allowed")
            expect(page.locator("#hostname")).to_have_text("expe-page.lab")
            expect(page.locator("#transport")).to_have_text("Direct")
            expect(page.locator("#registration-expires")).not_to_have_text("—")

            page.click("#renew-authorization")
            expect(page.locator("#outcome")).to_contain_text("renew-authorization: done")
            expect(page.locator("#authorization-status")).to_have_text("No licenses in use")
            expect(page.locator("#usage tbody tr")).to_have_count(4)
            expect(page.locator('#usage tr[data-license="rms"] td').nth(3)).to_have_text("4")
            expect(page.locator('#usage tr[data-license="rms"] .tag-status')).to_have_text("Authorized")
            expect(page.locator('#attempts tr[data-attempt="Authorization"] td').nth(2)).to_have_text("succeeded")
            page.screenshot(path=str(tmp_path / "smart-registered.png"), full_page=True)

            status = subprocess.run([sys.executable, "-m", "meter", "smart", "status", "--admin", node.url("")],
                                    capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            assert "Registration status:   Registered" in status.stdout and va in status.stdout
            assert "EXPWY_RMS" in status.stdout

            page.once("dialog", lambda d: d.dismiss())
            page.click("#deregister")
            expect(page.locator("#registration-status")).to_have_text("Registered")
            page.once("dialog", lambda d: d.accept())
            page.click("#deregister")
            expect(page.locator("#outcome")).to_contain_text("deregister: done")
            expect(page.locator("#registration-status")).to_have_text("Unregistered")
            expect(page.locator("#authorization-status")).to_have_text("Evaluation mode")
        finally:
            browser.close()
    assert [e for e in errors if REFUSED not in e] == []
    assert manager.show()["instances"] == []


def test_l4_meter_run_refuses_a_smart_state_under_product_vcs(tmp_path):
    """L4: `meter run` on a state in Smart mode with `[node] product = "vcs"` stops with one line."""
    node = MeterProcess(tmp_path / "node", node={"product": "vcs"})
    node.meter_cli("mode", "smart", "--yes")  # the state says expressway until the node runs
    done = subprocess.run([sys.executable, "-m", "meter", "run", "--config", str(node.config)],
                          capture_output=True, text=True, timeout=60, cwd=node.workdir)
    assert done.returncode == 2
    assert "L4" in done.stdout + done.stderr and "vcs" in done.stdout + done.stderr
