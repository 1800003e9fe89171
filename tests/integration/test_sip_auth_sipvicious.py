"""Authentication and admission against real attack tools (sipvicious: svmap, svwar, svcrack, Debian
package `sipvicious`) and a real client, on a node process with `[auth]` on (RFC 3261 §22).

What sipvicious prints, read from its source (0.3.3): svwar and svcrack print a result table on
stdout (`| alice | reqauth |`, `| alice | alice-pw |`) and log to stderr, ending with "found
nothing" when the table is empty; svmap prints a table of devices (`| 127.0.0.1:5060 | meter |`).
The tables are parsed here; every test also has a control run that finds something, so a parse
that silently reads nothing would fail it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys

import pytest

from tests.integration.peers import MeterProcess, wait_until
from tests.sipclient import SDP_OFFER, SipUA, digest_answer

pytestmark = pytest.mark.integration

REALM = "lab.test"
ROOM = "Cisco/SX80 TC7.3.21.3a1d8b3"
AUTH_ON = f'[auth]\nenabled = true\nrealm = "{REALM}"\n'
WORDS = ["alice", "bob", "carol", "100", "101", "1000", "nobody"]
WRONG_PASSWORDS = ["123456", "password", "alice", "secret", "Alice-pw"]


def tool(name: str) -> str:
    exe = shutil.which(name)
    assert exe, f"{name} not found: install Debian's sipvicious package (make test does)"
    return exe


def run(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([tool(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout)


def table_rows(stdout: str) -> list[tuple[str, str]]:
    """The two-column rows of a sipvicious result table (header row excluded)."""
    rows = re.findall(r"^\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*$", stdout, re.M)
    return [r for r in rows if r[0] not in ("Extension", "SIP")]


def add_user(node: MeterProcess, user: str, password: str) -> None:
    """`meter users add` as an operator runs it, password on stdin."""
    result = subprocess.run([sys.executable, "-m", "meter", "users", "add", user, "--realm", REALM, "--password-stdin",
                             "--state-dir", str(node.state_dir)], input=password + "\n", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def in_use(node: MeterProcess) -> dict[str, float]:
    licenses = node.api("licenses")["licenses"]
    return {name: licenses[name]["in_use"] for name in ("room", "desktop")}


def aors(node: MeterProcess) -> set[str]:
    """Registered aliases (/api/registrations: a page {"items", ...}, or a plain list before paging)."""
    doc = node.api("registrations?limit=1000")
    return {r["alias"] for r in (doc["items"] if isinstance(doc, dict) else doc)}


async def register(node: MeterProcess, user: str, password: str | None, *, expires: int = 300, contact=None,
                   domain: str = REALM):
    ua = await SipUA.open(user, ("127.0.0.1", node.sip_port), domain=domain)
    try:
        return await ua.register(expires=expires, password=password, contact=contact, extra=[("User-Agent", ROOM)])
    finally:
        ua.close()


@pytest.fixture
def auth_node(tmp_path):
    node = MeterProcess(tmp_path / "auth-on", extra=AUTH_ON)
    add_user(node, "alice", "alice-pw")
    add_user(node, "bob", "bob-pw")
    node.start()
    yield node
    assert node.stop() == 0, node.log_tail()


def test_real_client_registers_with_the_right_password_and_is_charged_wrong_one_is_not(auth_node):
    node = auth_node
    assert asyncio.run(register(node, "alice", "wrong")).status == 401
    assert in_use(node) == {"room": 0, "desktop": 0} and aors(node) == set()
    assert asyncio.run(register(node, "alice", "alice-pw")).status == 200
    wait_until(lambda: in_use(node)["room"] == 1, 5, "alice's room license")
    # bob's valid credentials cannot remove alice's binding (RFC 3261 §10.3 step 3): 403
    async def bob_unregisters_alice():
        ua = await SipUA.open("alice", ("127.0.0.1", node.sip_port), domain=REALM)
        try:
            first = await ua.register(expires=0, contact="*")
            assert first.status == 401
            req = ua.request("REGISTER", f"sip:{REALM}", to=ua.aor, contact=False, call_id=first.call_id,
                             headers=[("Contact", "*"), ("Expires", "0"),
                                      digest_answer(first, "bob", "bob-pw", "REGISTER", f"sip:{REALM}")])
            ua.send(req)
            return await ua.final("REGISTER", call_id=first.call_id)
        finally:
            ua.close()
    refused = asyncio.run(bob_unregisters_alice())
    assert (refused.status, refused.reason) == (403, "Forbidden - not the owner of this address")
    assert aors(node) == {f"sip:alice@{REALM}"} and in_use(node)["room"] == 1
    log = node.log_path.read_text()
    assert re.search(r"sip\.auth\.failed source=udp:127\.0\.0\.1:\d+ user_agent=\S+ method=REGISTER user=alice "
                     r"reason=\"wrong password\"", log), log
    assert "alice-pw" not in log and "wrong" not in log.replace('"wrong password"', "")


def test_svwar_register_invite_options_find_no_extension_and_register_nothing(auth_node, tmp_path):
    node = auth_node
    assert asyncio.run(register(node, "alice", "alice-pw")).status == 200  # a registered alias to hide
    assert asyncio.run(register(node, "bob", "bob-pw")).status == 200
    assert asyncio.run(register(node, "bob", "bob-pw", expires=0, contact="*")).status == 200  # known, not now
    wait_until(lambda: in_use(node)["room"] == 1, 5, "alice's room license only")
    words = tmp_path / "extensions.txt"
    words.write_text("\n".join(WORDS) + "\n")
    for method in ("REGISTER", "INVITE", "OPTIONS"):
        for force in ((), ("--force",)):
            result = run("svwar", "-m", method, "-d", str(words), "-p", str(node.sip_port), *force, "127.0.0.1")
            assert table_rows(result.stdout) == [], (method, force, result.stdout, result.stderr)
            assert "found nothing" in result.stderr, (method, force, result.stderr)
            if not force:  # svwar's own sanity check sees a challenge for a random extension and gives up
                assert "authentication request for an unknown extension" in result.stderr
    assert in_use(node) == {"room": 1, "desktop": 0}
    assert aors(node) == {f"sip:alice@{REALM}"}


def test_svwar_control_auth_off_enumerates_and_registers_as_documented(tmp_path):
    """The default (auth off) is what config/meter.toml warns about: svwar -m INVITE tells a known
    alias (480) from unknown ones (404), and svwar -m REGISTER registers every name it tries. This
    also proves that the table parse and the registration check above can see a finding."""
    node = MeterProcess(tmp_path / "auth-off").start()
    try:
        # bob as svwar names him (sip:bob@127.0.0.1): known here, not registered now
        assert asyncio.run(register(node, "bob", None, domain="127.0.0.1")).status == 200
        assert asyncio.run(register(node, "bob", None, expires=0, contact="*", domain="127.0.0.1")).status == 200
        words = tmp_path / "extensions.txt"
        words.write_text("\n".join(WORDS) + "\n")
        result = run("svwar", "-m", "INVITE", "-d", str(words), "-p", str(node.sip_port), "127.0.0.1")
        assert table_rows(result.stdout) == [("bob", "weird")], (result.stdout, result.stderr)
        run("svwar", "-m", "REGISTER", "-d", str(words), "-p", str(node.sip_port), "127.0.0.1")
        assert {f"sip:{w}@127.0.0.1" for w in WORDS} <= aors(node), aors(node)
    finally:
        assert node.stop() == 0


def test_svcrack_with_a_wrong_wordlist_finds_no_password(tmp_path):
    """Against the default challenges (SHA-256 first) and against MD5 only (what svcrack speaks);
    with MD5 only the right password in the list is found (the control), the wrong ones are not,
    and each failure is logged with the source and User-Agent."""
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("\n".join(WRONG_PASSWORDS) + "\n")
    right = tmp_path / "right.txt"
    right.write_text("\n".join([*WRONG_PASSWORDS, "alice-pw"]) + "\n")
    default = MeterProcess(tmp_path / "sha256-first", extra=AUTH_ON)
    md5_only = MeterProcess(tmp_path / "md5-only", extra=AUTH_ON + 'algorithms = ["MD5"]\n')
    for node in (default, md5_only):
        add_user(node, "alice", "alice-pw")
        node.start()
    try:
        for node in (default, md5_only):
            result = run("svcrack", "-u", "alice", "-d", str(wrong), "-p", str(node.sip_port), "127.0.0.1")
            assert table_rows(result.stdout) == [] and "found nothing" in result.stderr, result.stderr
            assert aors(node) == set() and in_use(node) == {"room": 0, "desktop": 0}
        failures = re.findall(r"sip\.auth\.failed source=udp:127\.0\.0\.1:\d+ user_agent=(\S+) method=REGISTER "
                              r"user=alice reason=\"wrong password\"", md5_only.log_path.read_text())
        assert len(failures) == len(WRONG_PASSWORDS), md5_only.log_tail()
        assert all(ua for ua in failures)
        control = run("svcrack", "-u", "alice", "-d", str(right), "-p", str(md5_only.sip_port), "127.0.0.1")
        assert table_rows(control.stdout) == [("alice", "alice-pw")], (control.stdout, control.stderr)
    finally:
        for node in (default, md5_only):
            node.stop()


def test_svmap_finds_nothing_from_outside_the_allow_list(auth_node, tmp_path):
    seen = run("svmap", "-p", str(auth_node.sip_port), "127.0.0.1")
    assert [ua for _, ua in table_rows(seen.stdout)] == ["meter"], seen.stdout  # control: found when allowed
    node = MeterProcess(tmp_path / "allow", extra=AUTH_ON + 'allow = ["192.0.2.0/24"]\n').start()
    try:
        hidden = run("svmap", "-p", str(node.sip_port), "127.0.0.1")
        assert table_rows(hidden.stdout) == [] and "found nothing" in hidden.stderr, (hidden.stdout, hidden.stderr)
        assert "sip.admission.outside_allow_list source=udp:127.0.0.1" in node.log_path.read_text()
    finally:
        assert node.stop() == 0


def test_inline_with_auth_enabled_kamailio_challenge_passes_and_nothing_is_charged_until_200(kamailio, tmp_path):
    """Inline the node does not challenge: Kamailio's 401 (its realm, the To domain) reaches the
    client untouched, and the room license is charged only once Kamailio's 200 OK confirms."""
    node = MeterProcess(tmp_path / "inline", sip={"mode": "inline", "upstream": f"127.0.0.1:{kamailio.port}"},
                        extra=AUTH_ON).start()

    async def scenario():
        ua = await SipUA.open("auth-inline1", ("127.0.0.1", node.sip_port), domain="127.0.0.1")
        try:
            challenge = await ua.register(expires=120, extra=[("User-Agent", ROOM)])
            assert challenge.status == 401
            assert 'realm="127.0.0.1"' in challenge.header("www-authenticate"), challenge  # Kamailio's, not ours
            assert in_use(node)["room"] == 0
            ok = await ua.register(expires=120, password="secret", extra=[("User-Agent", ROOM)])
            assert ok.status == 200, ok
            wait_until(lambda: in_use(node)["room"] == 1, 5, "the room license after Kamailio's 200 OK")
            assert (await ua.register(expires=0, password="secret", extra=[("User-Agent", ROOM)])).status == 200
        finally:
            ua.close()

    try:
        asyncio.run(scenario())
    finally:
        assert node.stop() == 0, node.log_tail()


def test_user_added_while_running_registers_and_an_unregistered_source_is_challenged_407(auth_node):
    """`meter users add` on a running node takes effect within a second or so (mtime reload); an
    INVITE from a source that is not the caller's registered flow is challenged (RFC 3261 §22.3)
    and, answered with the caller's credentials, reaches the callee."""
    node = auth_node
    assert asyncio.run(register(node, "carol", "carol-pw")).status == 401
    add_user(node, "carol", "carol-pw")

    async def carol_registers():
        return (await register(node, "carol", "carol-pw")).status == 200

    wait_until(lambda: asyncio.run(carol_registers()), 10, "carol's new credentials to be picked up")

    async def call():
        bob = await SipUA.open("bob", ("127.0.0.1", node.sip_port), domain=REALM)
        alice = await SipUA.open("alice", ("127.0.0.1", node.sip_port), domain=REALM)  # not registered
        try:
            assert (await bob.register(expires=300, password="bob-pw")).status == 200
            invite = alice.invite(f"sip:bob@{REALM}")
            challenge = await alice.final("INVITE", call_id=invite.call_id)
            assert challenge.status == 407, challenge
            alice.ack_non2xx(invite, challenge)
            auth = digest_answer(challenge, "alice", "alice-pw", "INVITE", f"sip:bob@{REALM}")
            retry = alice.request("INVITE", f"sip:bob@{REALM}", call_id=invite.call_id, headers=[auth],
                                  body=SDP_OFFER, content_type="application/sdp")
            alice.send(retry)
            at_bob = await bob.expect(method="INVITE")
            assert at_bob.call_id == invite.call_id and not at_bob.has_header("proxy-authorization")
            bob.reply(at_bob, 486)
            assert (await alice.final("INVITE", call_id=invite.call_id)).status == 486
        finally:
            bob.close()
            alice.close()

    asyncio.run(call())


def test_baresip_registers_with_its_password_and_is_charged_wrong_password_is_not(tmp_path):
    """A real softphone (Debian's baresip 1.0.0, libre 1.1.0) with `auth_pass`. That libre answers
    MD5 only and gives up ("Function not implemented") as soon as any challenge names another
    algorithm, even after an MD5 one, so a lab with such phones sets `algorithms = ["MD5"]`
    (config/meter.toml says so)."""
    from tests.integration.test_sip_baresip import Baresip

    node = MeterProcess(tmp_path / "baresip", extra=AUTH_ON + 'algorithms = ["MD5"]\n')
    add_user(node, "alice", "alice-pw")
    add_user(node, "bob", "bob-pw")
    node.start()
    phones = []
    try:
        for name, password in (("alice", "alice-pw"), ("bob", "not-bobs")):
            phone = Baresip(tmp_path / "phones", name, node.sip_port)
            accounts = phone.dir / "accounts"
            accounts.write_text(accounts.read_text().replace(";regint=", f";auth_pass={password};regint="))
            phones.append(phone.start(30))
        wait_until(lambda: aors(node) == {"sip:alice@127.0.0.1"}, 15, "alice's baresip to register")
        wait_until(lambda: "user=bob reason=\"wrong password\"" in node.log_path.read_text(), 15,
                   "bob's wrong password to be refused")
        assert sum(in_use(node).values()) == 1 and aors(node) == {"sip:alice@127.0.0.1"}
    finally:
        for phone in phones:
            phone.stop()
        assert node.stop() == 0, node.log_tail()
