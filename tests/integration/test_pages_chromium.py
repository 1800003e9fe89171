"""The admin pages driven by interaction in Debian's Chromium (playwright), against a running node
with real SIP user agents registered and calling through it (issue 12 item 5).

Each page is opened, read and clicked as an operator would; every page must load without a console
error or an uncaught exception. Screenshots go to the test's tmp_path and to test-artifacts/ (kept
by CI, ignored by git).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.integration.peers import REPO, MeterProcess, wait_until
from tests.integration.test_metering_calls import Callee, call
from tests.integration.test_metering_prometheus import register
from tests.sipclient import SDP_ANSWER, SDP_OFFER, SipUA

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
ROOM_UA = "PolycomRealPresenceGroup500/5.0.1"
DESKTOP_UA = "TANDBERG/529 (TC7.3.6.1ed2b3a) Cisco-EX90"
# Chromium's line for a request the page expected to be refused (the forged key's 400).
REFUSED_REQUEST = re.compile(r"Failed to load resource: the server responded with a status of 400")


class SipSide:
    """SIP user agents on their own event loop in a thread, so they keep answering while the browser runs."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.closers = []

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        async def closing():
            for close in self.closers:
                close()
            await asyncio.sleep(0.1)  # the cancelled tasks finish

        self.run(closing())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A node in enforce mode with 7 room, 2 desktop and 3 RMS licenses; two rooms and a desktop
    registered; one call from a room to a third-party SIP far end (C2: one RMS)."""
    tmp = tmp_path_factory.mktemp("pages")
    sip = SipSide()
    node = None
    try:
        async def far_end():  # the ITSP's side: its port is the zone's target
            return await SipUA.open("pstn", ("127.0.0.1", 9), domain="itsp.example")

        far = sip.run(far_end())
        sip.closers.append(far.close)
        zones = [{"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
                  "target": f"127.0.0.1:{far.port}"}]
        node = MeterProcess(tmp / "node", licensing={"enforcement": "enforce"}, zones=zones)
        node.install_keys({"ROOM": 7, "DESKTOP": 2, "RMS": 3})
        node.start()

        async def endpoints():
            uas = {}
            for name, agent in (("room-alpha", ROOM_UA), ("room-beta", ROOM_UA), ("desk-gamma", DESKTOP_UA)):
                ua = await SipUA.open(name, ("127.0.0.1", node.sip_port), domain="lab.test")
                assert (await register(ua, agent)).status == 200
                uas[name] = ua
            callee = Callee(far, SDP_ANSWER)
            final, _dialog = await call(uas["room-alpha"], "sip:+15550100@itsp.example", SDP_OFFER)
            assert final.status == 200, final
            return uas, callee

        uas, callee = sip.run(endpoints())
        sip.closers += [callee.close] + [ua.close for ua in uas.values()]
        token = (node.state_dir / "admin-token").read_text().strip()
        yield node, token, tmp
    finally:
        sip.close()
        if node is not None:
            node.stop()


@pytest.fixture
def browser_page(tmp_path):
    """A Chromium page that records console errors and uncaught exceptions; screenshots on demand."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (apt-get install chromium)"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

        def shot(name: str):
            path = tmp_path / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(path, ARTIFACTS / path.name)

        page.errors, page.shot = errors, shot
        try:
            yield page
        finally:
            browser.close()


def use_token(page, token: str):
    page.fill("#token", token)
    page.click("#token-save")


def test_r1_r2_p1_resource_usage_shows_each_license_per_peer_and_cluster_and_refreshes(lab, browser_page):
    node, _token, _ = lab
    page = browser_page
    page.goto(node.url("/"))
    expect(page.locator("#total-room td").nth(1)).to_have_text("2")      # R1: two rooms
    expect(page.locator("#total-desktop td").nth(1)).to_have_text("1")   # R2: an EX90 on TC7.3.6
    expect(page.locator("#total-rms td").nth(1)).to_have_text("1")       # C2: the call to the ITSP
    here = page.locator("#row-room-meter-test td")
    expect(here.nth(4)).to_have_text("28.6%")  # 2 of 7 room licenses
    expect(here.nth(2)).to_have_text("2")      # peak, taken at the charge
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", here.nth(3).inner_text())
    expect(page.locator("#total-room td").nth(5)).to_have_text("7 licenses")
    expect(page.locator("#node")).to_contain_text("meter-test (Expressway-C, pak, enforce)")
    expect(page.locator("#banner")).to_be_hidden()  # enforce mode with licenses: no banner
    first = page.locator("#status").inner_text()
    page.wait_for_function(f"document.getElementById('status').textContent !== {first!r}", timeout=15_000)
    page.shot("usage")
    assert page.errors == []


def test_r1_r9_registrations_listed_with_user_agent_and_filtered_and_rule_text_on_hover(lab, browser_page):
    node, _token, _ = lab
    page = browser_page
    page.goto(node.url("/registrations"))
    rows = page.locator("#registrations tbody tr")
    expect(rows).to_have_count(3)
    alpha = page.locator('tr[data-alias="sip:room-alpha@lab.test"] td')
    expect(alpha.nth(4)).to_have_text(ROOM_UA)
    expect(alpha.nth(7)).to_have_text("room")
    assert "room-alpha" in alpha.nth(5).inner_text()  # the contact
    assert int(alpha.nth(6).inner_text().split()[0]) > 0  # seconds to expiry
    page.fill("#filter", "EX90")
    page.press("#filter", "Enter")
    expect(rows).to_have_count(1)
    expect(page.locator('tr[data-alias="sip:desk-gamma@lab.test"] td').nth(2)).to_have_text("desktop")
    rule = page.locator('tr[data-alias="sip:desk-gamma@lab.test"] .rule[data-rule="R2"]')
    rule.hover()
    expect(page.locator("#tooltip")).to_be_visible()
    expect(page.locator("#tooltip")).to_contain_text("R2: Desktop systems are the SIP models")
    page.shot("registrations-filtered")
    assert page.errors == []


def test_c2_calls_page_shows_license_units_zone_duration_and_rule_text(lab, browser_page):
    node, _token, _ = lab
    page = browser_page
    page.goto(node.url("/calls"))
    row = page.locator("#calls tbody tr").first
    expect(row.locator("td").nth(1)).to_contain_text("+15550100@itsp.example")
    cells = row.locator("td")
    expect(cells.nth(3)).to_have_text("third_party_sip")
    expect(cells.nth(5)).to_have_text("rms")
    expect(cells.nth(6)).to_have_text("1")
    expect(cells.nth(7)).to_have_text("meter-test")
    assert re.match(r"(\d+h )?\d+m \d+s", cells.nth(8).inner_text())
    rule = row.locator('.rule[data-rule="C2"]')
    rule.hover()
    expect(page.locator("#tooltip")).to_contain_text("C2: All other calls cost one RMS")
    page.shot("calls")
    assert page.errors == []


def test_k1_k4_k5_option_keys_added_refused_with_the_reason_and_removed_after_confirmation(lab, browser_page):
    node, token, tmp = lab
    page = browser_page
    page.goto(node.url("/option-keys"))
    expect(page.locator("#keys tbody tr")).to_have_count(3)
    serial = page.locator("#serial").inner_text()
    use_token(page, token)

    # K1: a valid key through the form is listed
    valid = node.meter_cli("keys", "issue", "--option", "RMS", "--quantity", "5").strip().split()[-1]
    page.fill("#key-text", valid)
    page.click("#add-key-button")
    expect(page.locator("#key-added")).to_contain_text("added as option 4")
    expect(page.locator("#key-4 td").nth(1)).to_have_text("Rich Media Sessions")
    expect(page.locator("#key-4")).to_have_attribute("data-status", "active")

    # altered: one character changed after issue
    middle = len(valid) // 2
    altered = valid[:middle] + ("A" if valid[middle] != "A" else "B") + valid[middle + 1:]
    page.fill("#key-text", altered)
    page.click("#add-key-button")
    expect(page.locator("#key-error")).to_contain_text("refused: ")
    assert re.search(r"altered|forged|malformed", page.locator("#key-error").inner_text())

    # forged: signed by another issuer for this serial
    other = tmp / "other-issuer"
    subprocess.run([sys.executable, "-m", "meter", "init", "--state-dir", str(other)], check=True,
                   capture_output=True, timeout=60)
    forged = subprocess.run([sys.executable, "-m", "meter", "keys", "issue", "--state-dir", str(other), "--serial",
                             serial, "--option", "ROOM", "--quantity", "50"], check=True, capture_output=True,
                            text=True, timeout=60).stdout.strip().split()[-1]
    page.fill("#key-text", forged)
    page.click("#add-key-button")
    expect(page.locator("#key-error")).to_contain_text("forged: the signature does not verify")
    expect(page.locator("#keys tbody tr")).to_have_count(4)  # neither refused key is listed
    page.shot("option-keys-refused")

    # K5: a demo key shows its warning
    demo = node.meter_cli("keys", "issue", "--option", "MICROSOFT_INTEROP", "--expires", "30d").strip().split()[-1]
    page.fill("#key-text", demo)
    page.click("#add-key-button")
    expect(page.locator(".demo-key")).to_contain_text("K5")

    # removal asks first: dismissed keeps the key, accepted removes it
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click('button.remove[data-index="4"]')
    expect(page.locator("#key-4")).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click('button.remove[data-index="4"]')
    expect(page.locator("#key-4")).to_have_count(0)
    page.shot("option-keys")
    unexpected = [e for e in page.errors if not REFUSED_REQUEST.search(e)]
    assert unexpected == []


def test_k3_restart_required_shows_on_the_keys_and_alarms_pages(lab, browser_page):
    node, token, _ = lab
    page = browser_page
    page.goto(node.url("/option-keys"))
    use_token(page, token)
    key = node.meter_cli("keys", "issue", "--option", "TRAVERSAL_SERVER").strip().split()[-1]
    page.fill("#key-text", key)
    page.click("#add-key-button")
    expect(page.locator("#key-warnings")).to_contain_text("K3")
    expect(page.locator('tr[data-status="restart_required"]')).to_have_count(1)
    expect(page.locator(".notice.restart")).to_contain_text("restart required")
    page.goto(node.url("/alarms"))
    alarm = page.locator('tr[data-alarm="restart-required"] td')
    expect(alarm.nth(1)).to_have_text("active")
    expect(alarm.nth(3)).to_have_text("K3")
    assert re.match(r"\d{4}-\d\d-\d\d ", alarm.nth(0).inner_text())
    page.shot("alarms")
    assert page.errors == []


def test_history_page_draws_the_plot_with_a_capacity_line(lab, browser_page):
    node, _token, _ = lab
    page = browser_page
    page.goto(node.url("/history"))
    page.select_option("#license", "room")
    expect(page.locator("#bucket-count")).to_contain_text("capacity 7")
    expect(page.locator("#history-plot line.capacity")).to_have_count(1)
    page.select_option("#range", "week")
    expect(page.locator("#bucket-count")).to_contain_text("intervals of 3600 s")
    page.shot("history")
    assert page.errors == []


def test_enforce_mode_without_licenses_shows_the_banner_on_every_page(tmp_path, browser_page):
    node = MeterProcess(tmp_path / "bare", licensing={"enforcement": "enforce"}).start()
    try:
        page = browser_page
        for path in ("/", "/registrations", "/calls", "/option-keys", "/alarms", "/history"):
            page.goto(node.url(path))
            expect(page.locator("#banner")).to_contain_text("enforce mode with no licenses")
            expect(page.locator("nav a.here")).to_have_attribute("href", path)
        page.shot("banner")
        assert page.errors == []
    finally:
        node.stop()


def test_p1_resource_usage_has_a_row_per_cluster_peer_and_the_cluster_total(tmp_path, browser_page):
    """Two nodes sharing their pool through a real Redis: A's page lists B's room system on B's row
    and in the cluster total (P1)."""
    from tests.integration.test_cluster_redis import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    nodes = []
    sip = SipSide()
    try:
        extra = (f'[cluster]\nstore = "redis"\nredis_url = "redis://127.0.0.1:{server.port}/0"\nname = "lab"\n'
                 f'sync_interval = 0.2\n')
        a = MeterProcess(tmp_path / "a", node={"name": "node-a"}, licensing={"enforcement": "enforce"}, extra=extra)
        b = MeterProcess(tmp_path / "b", node={"name": "node-b"}, licensing={"enforcement": "enforce"}, extra=extra)
        nodes += [a, b]
        a.install_keys({"ROOM": 4})
        a.start()
        b.start()

        async def room_on_b():
            ua = await SipUA.open("room-b", ("127.0.0.1", b.sip_port), domain="lab.test")
            assert (await register(ua, ROOM_UA)).status == 200
            return ua

        wait_until(lambda: b.api("licenses")["licenses"]["room"]["capacity"] == 4, 20, "B to see A's keys (P1)")
        sip.closers.append(sip.run(room_on_b()).close)
        page = browser_page
        page.goto(a.url("/"))
        expect(page.locator("#row-room-node-b td").nth(1)).to_have_text("1", timeout=20_000)
        expect(page.locator("#row-room-node-a td").nth(1)).to_have_text("0")
        expect(page.locator("#total-room td").nth(1)).to_have_text("1")
        expect(page.locator("#total-room td").nth(4)).to_have_text("25%")
        page.shot("usage-cluster")
        assert page.errors == []
    finally:
        sip.close()
        for node in nodes:
            node.stop()
        server.stop()
