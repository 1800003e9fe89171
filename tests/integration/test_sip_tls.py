"""SIP over TLS (RFC 3261 §26, issue 10 item 4) with real clients and a CA the test makes:
baresip phones register and call over TLS through the node, standalone, to a UDP zone (RFC 5658
double Record-Route, RMS charged) and inline to Kamailio's tls listener; linphone registers over
TLS; a Python TLS client checks the node's certificate and client-certificate verification."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import time
import uuid

import pytest

from meter.sip.node import SipNode
from meter.sip.settings import SipSettings
from meter.sip.tls import TlsSettings
from tests.integration.conftest import Kamailio, need, run
from tests.integration.peers import MeterProcess, async_wait_until, free_port, stop_process, wait_until
from tests.integration.test_sip_baresip import Baresip
from tests.integration.tlsca import TestCA

pytestmark = pytest.mark.integration


def _tls_section(ca: TestCA, port: int, **extra) -> str:
    leaf = ca.issue("node")
    table = {"enabled": "true", "port": str(port), "certificate": f'"{leaf.certificate}"',
             "key": f'"{leaf.key}"', "ca": f'"{ca.ca}"', **extra}
    return "[tls]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())


@pytest.fixture
def tls_node(tmp_path):
    ca = TestCA(tmp_path / "ca")
    tls_port = free_port()
    node = MeterProcess(tmp_path / "node", extra=_tls_section(ca, tls_port))
    node.tls_port = tls_port
    node.ca = ca
    node.start()
    yield node
    rc = node.stop()
    assert rc == 0, f"node exited with {rc}: {node.log_tail()}"


def _tls_phone(tmp_path, ca: TestCA, node, name: str, *, register: bool = True) -> Baresip:
    """A baresip phone on TLS, with a UDP console (module cons) to give it commands later."""
    phone = Baresip(tmp_path, name, node.tls_port, transport="tls", register=register)
    leaf = ca.issue(name)
    phone.console = free_port()
    with open(phone.dir / "config", "a") as config:
        config.write(f"sip_certificate {leaf.combined}\nsip_cafile {ca.ca}\n"
                     f"module cons.so\ncons_listen 127.0.0.1:{phone.console}\n")
    return phone


def _command(phone: Baresip, command: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(f"{command}\n".encode(), ("127.0.0.1", phone.console))


def _options(port: int, context: ssl.SSLContext, *, record_route: bool = False) -> str:
    """One request over a fresh TLS connection; the first response's text."""
    call_id = uuid.uuid4().hex
    method = "INVITE" if record_route else "OPTIONS"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            local = tls.getsockname()[1]
            tls.sendall((f"{method} sip:127.0.0.1:{port};transport=tls SIP/2.0\r\n"
                         f"Via: SIP/2.0/TLS 127.0.0.1:{local};branch=z9hG4bK{call_id};rport\r\n"
                         f"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: {call_id}\r\n"
                         f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace")


def test_node_answers_over_tls_with_a_certificate_from_its_ca_rfc3261_26(tls_node):
    context = ssl.create_default_context(cafile=str(tls_node.ca.ca))
    answer = _options(tls_node.tls_port, context)
    assert answer.startswith("SIP/2.0 200"), answer
    # A client that does not trust the test CA refuses the node's certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        _options(tls_node.tls_port, ssl.create_default_context())


def test_client_certificate_required_when_configured(tmp_path):
    ca = TestCA(tmp_path / "ca")
    tls_port = free_port()
    node = MeterProcess(tmp_path / "node", extra=_tls_section(ca, tls_port, require_client_certificate="true"))
    node.start()
    try:
        trusting = ssl.create_default_context(cafile=str(ca.ca))
        try:  # TLS 1.3 reports the refusal on the first read, TLS 1.2 in the handshake
            answer = _options(tls_port, trusting)
        except (ssl.SSLError, OSError) as exc:
            answer = repr(exc)
        assert not answer.startswith("SIP/2.0"), answer
        with_cert = ssl.create_default_context(cafile=str(ca.ca))
        leaf = ca.issue("client")
        with_cert.load_cert_chain(str(leaf.certificate), str(leaf.key))
        assert _options(tls_port, with_cert).startswith("SIP/2.0 200")
    finally:
        rc = node.stop()
    assert rc == 0, node.log_tail()


def _items(node, resource: str) -> list[dict]:
    """An admin listing's rows (paginated listings carry them under "items")."""
    listing = node.api(resource)
    return listing["items"] if isinstance(listing, dict) else listing


def _the_call(node, caller: str) -> dict | None:
    calls = [c for c in _items(node, "calls") if c["caller"] == f"sip:{caller}@127.0.0.1"]
    return calls[0] if calls and calls[0]["state"] == "confirmed" else None


def test_baresip_registers_and_calls_over_tls_through_the_node(tls_node, tmp_path):
    node, ca = tls_node, tls_node.ca
    phones = []
    try:
        bob = _tls_phone(tmp_path, ca, node, "tls-bob").start(40)
        phones.append(bob)
        # R1/R2/R9: the alias registered over TLS takes a room license.
        wait_until(lambda: len(_items(node, "registrations")) == 1, 15,
                   f"bob registered over TLS (bob: {bob.log_text()[-800:]}; node: {node.log_tail()})")
        assert _items(node, "registrations")[0]["license"] == "room"

        carol = _tls_phone(tmp_path, ca, node, "tls-carol").start(8, "/dial sip:tls-bob@127.0.0.1")
        phones.append(carol)
        wait_until(lambda: _the_call(node, "tls-carol") is not None, 15,
                   f"carol's TLS call confirmed (carol: {carol.log_text()[-800:]})")
        call = _the_call(node, "tls-carol")
        # C1: registered to registered costs no RMS, over TLS as over UDP.
        assert call["callee"] == "sip:tls-bob@127.0.0.1" and call["units"] == 0 and "C1" in call["rules"]
        wait_until(lambda: "Call established" in carol.log_text(), 5, "carol to see the call established")
        # RFC 3261 §26 / §16.6: the INVITE reached bob over TLS with the node's TLS Via and a
        # Record-Route naming its TLS listener, so in-dialog requests come back over TLS.
        invite = bob.log_text().split("INVITE sip:", 1)[1].split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
        assert f"Via: SIP/2.0/TLS 127.0.0.1:{node.tls_port};branch=" in invite, invite
        assert f"Record-Route: <sip:127.0.0.1:{node.tls_port};transport=tls;lr>" in invite, invite
        # carol quits: her BYE reaches bob over his TLS connection, the call is released.
        wait_until(lambda: _items(node, "calls") == [], 20, "the call released after carol's BYE over TLS")
        assert node.api("sip")["tcp_connections"] >= 1
    finally:
        for phone in phones:
            phone.stop()


def test_tls_caller_to_a_udp_zone_pays_rms_with_a_double_record_route_rfc5658(tmp_path):
    # A registered phone over TLS calls the third-party SIP zone (matched by domain, sent to its
    # target over UDP): C2/C5 one RMS for a video call, and the node's Record-Route is doubled,
    # TLS towards the caller and UDP towards the zone (RFC 5658), so the BYE crosses both legs.
    ca = TestCA(tmp_path / "ca")
    tls_port = free_port()
    itsp = Baresip(tmp_path, "itsp-dave", 0, host="127.0.0.2", register=False)
    node = MeterProcess(tmp_path / "node", extra=_tls_section(ca, tls_port), zones=[
        {"name": "itsp", "kind": "third_party_sip", "match": ["domain:itsp.example"],
         "target": f"127.0.0.2:{itsp.port}"}])
    node.tls_port = tls_port
    node.start()
    phones = [itsp]
    try:
        itsp.start(40)
        carol = _tls_phone(tmp_path, ca, node, "tz-carol").start(10, "/dial sip:itsp-dave@itsp.example")
        phones.append(carol)
        wait_until(lambda: _the_call(node, "tz-carol") is not None, 15,
                   f"carol's call to the zone confirmed (carol: {carol.log_text()[-800:]};"
                   f" itsp: {itsp.log_text()[-800:]})")
        call = _the_call(node, "tz-carol")
        assert call["license"] == "rms" and call["call_class"] == "video", call
        assert node.api("licenses")["licenses"]["rms"]["in_use"] == 1.0
        invite = itsp.log_text().split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
        assert (f"Record-Route: <sip:127.0.0.1:{node.sip_port};lr>" in invite
                and f"<sip:127.0.0.1:{tls_port};transport=tls;lr>" in invite), invite
        wait_until(lambda: _items(node, "calls") == [], 20, "the call released after carol's BYE")
        assert node.api("licenses")["licenses"]["rms"]["in_use"] == 0
    finally:
        for phone in phones:
            phone.stop()
        rc = node.stop()
    assert rc == 0, node.log_tail()


def test_linphone_registers_over_tls_verifying_the_node_certificate(tls_node, tmp_path):
    # linphonec (belle-sip on mbedtls) checks the node's certificate against the test CA
    # (verify_server_certs, verify_server_cn) and registers over TLS: a room license (R1, R9).
    node, home = tls_node, tmp_path / "linphone"
    (home / ".local" / "share" / "linphone").mkdir(parents=True)
    rc = home / "linphonerc"
    rc.write_text(f"[sip]\nsip_port=0\nsip_tcp_port=0\nsip_tls_port=-1\nroot_ca={node.ca.ca}\n"
                  "verify_server_certs=1\nverify_server_cn=1\n[video]\nenabled=0\n")
    log = open(home / "linphonec.out", "wb")
    proc = subprocess.Popen([need("linphonec"), "-c", str(rc), "-d", "6", "-l", str(home / "linphone.log")],
                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HOME": str(home)}, cwd=home)
    try:
        # linphonec reads commands once its transports are up (its main loop runs).
        wait_until(lambda: "SIP network reachability state is now [UP]" in
                   (home / "linphone.log").read_text(errors="replace"), 20, "linphonec to start")
        time.sleep(0.5)
        # The third word is a password: without one linphonec would read the next line as it.
        proc.stdin.write(f"register sip:lin@127.0.0.1 <sip:127.0.0.1:{node.tls_port};transport=tls> unused\n"
                         .encode())
        proc.stdin.flush()
        wait_until(lambda: [r["alias"] for r in _items(node, "registrations")] == ["sip:lin@127.0.0.1"], 20,
                   "linphone registered over TLS")
        reg = _items(node, "registrations")[0]
        assert reg["license"] == "room" and reg["device"] == "Linphone"
        proc.stdin.write(b"quit\n")  # linphonec unregisters (Expires 0) on the way out
        proc.stdin.flush()
        wait_until(lambda: _items(node, "registrations") == [], 15, "linphone's registration released")
    finally:
        stop_process(proc, 10)
        log.close()


# -- inline to Kamailio over TLS ------------------------------------------------------------------------------


class KamailioTls(Kamailio):
    """The lab registrar (kamailio/tls.cfg) with a TLS listener and a certificate from the test CA."""

    cfg = Kamailio.cfg.parent / "tls.cfg"

    def __init__(self, rundir, ca: TestCA) -> None:
        super().__init__(rundir)
        self.tls_port = free_port()
        self.leaf = ca.issue("kamailio")
        self.ca = ca

    def extra_args(self) -> list[str]:
        return ["-l", f"tls:127.0.0.1:{self.tls_port}", "-A", f'TLS_CERT="{self.leaf.certificate}"',
                "-A", f'TLS_KEY="{self.leaf.key}"', "-A", f'TLS_CA="{self.ca.ca}"']


@pytest.fixture
def kamailio_tls(tmp_path):
    ca = TestCA(tmp_path / "ca")
    k = KamailioTls(tmp_path / "kamailio", ca)
    k.rundir.mkdir()
    k.start()
    yield k
    k.stop()


def test_baresip_over_tls_through_the_node_inline_to_kamailio_over_tls(kamailio_tls, tmp_path):
    # Phones -> node over TLS -> Kamailio's tls listener (verified against the test CA) and back:
    # Kamailio lists the phones with the node's TLS Path, calls come back through the node over
    # TLS, the node learns and charges the bindings (R1, R2) and the call (C1).
    k, ca = kamailio_tls, kamailio_tls.ca
    tls_port = free_port()
    node = MeterProcess(tmp_path / "node", sip={"mode": "inline", "upstream": f"127.0.0.1:{k.tls_port}",
                                                "upstream_transport": "tls"},
                        extra=_tls_section(ca, tls_port))
    node.tls_port = tls_port
    node.start()
    phones = []
    try:
        bob = _tls_phone(tmp_path, ca, node, "kt-bob").start(40)
        phones.append(bob)
        wait_until(lambda: "kt-bob" in " ".join(k.contacts()), 15,
                   f"bob's binding in Kamailio (bob: {bob.log_text()[-800:]}; node: {node.log_tail()};"
                   f" kamailio: {k.log_tail()})")
        assert any(f"127.0.0.1:{tls_port};transport=tls" in p for p in k.paths()), k.paths()
        wait_until(lambda: [r["alias"] for r in _items(node, "registrations")] == ["sip:kt-bob@127.0.0.1"], 10,
                   "the node to learn bob's binding from Kamailio's 200 OK")
        assert _items(node, "registrations")[0]["license"] == "room"

        # carol dials once the node knows her binding (baresip would otherwise send the INVITE
        # before Kamailio's 200 OK to her REGISTER has come back through the node).
        carol = _tls_phone(tmp_path, ca, node, "kt-carol").start(12)
        phones.append(carol)
        wait_until(lambda: len(_items(node, "registrations")) == 2, 10, "the node to learn carol's binding")
        _command(carol, "/dial sip:kt-bob@127.0.0.1")
        wait_until(lambda: _the_call(node, "kt-carol") is not None, 15,
                   f"carol's call confirmed through the node ({carol.log_text()[-800:]}; node: {node.log_tail()})")
        call = _the_call(node, "kt-carol")
        assert call["callee"] == "sip:kt-bob@127.0.0.1" and call["units"] == 0 and "C1" in call["rules"]
        wait_until(lambda: _items(node, "calls") == [], 20, "the call released after carol's BYE")
    finally:
        for phone in phones:
            phone.stop()
        rc = node.stop()
    assert rc == 0, node.log_tail()


# -- outbound TLS: the next hop is verified (RFC 5922 §7.2) ---------------------------------------------------


def _register(port: int, user: str) -> bytes:
    return (f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{user};rport\r\n"
            f"From: <sip:{user}@127.0.0.1>;tag=1\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: {user}\r\n"
            f"CSeq: 1 REGISTER\r\nContact: <sip:{user}@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def test_outbound_tls_upstream_is_verified_against_the_configured_ca(tmp_path):
    # Inline with upstream_transport = "tls": an upstream whose certificate the configured CA did
    # not sign gets nothing (RFC 3261 §16.9: the branch fails, 503 to the phone); one it signed
    # gets the REGISTER over TLS, with the node's TLS Via and Path.
    ours, theirs = TestCA(tmp_path / "ours"), TestCA(tmp_path / "theirs")
    node_leaf = ours.issue("node")
    tls = TlsSettings(enabled=True, port=0, certificate=str(node_leaf.certificate), key=str(node_leaf.key),
                      ca=str(ours.ca))

    async def upstream(ca: TestCA, received: list[bytes]):
        leaf = ca.issue("upstream")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(leaf.certificate), str(leaf.key))

        async def serve(reader, writer):
            received.append(await reader.readuntil(b"\r\n\r\n"))
            writer.close()

        return await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)

    async def scenario(ca: TestCA) -> tuple[list[bytes], bytes]:
        received: list[bytes] = []
        server = await upstream(ca, received)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        phone.bind(("127.0.0.1", 0))
        phone.setblocking(False)
        try:
            node = SipNode(SipSettings(host="127.0.0.1", port=0, mode="inline", upstream=f"127.0.0.1:{port}",
                                       upstream_transport="tls", t1=0.1, t2=0.4, t4=0.5), tls=tls)
            await node.start()
            try:
                phone.sendto(_register(phone.getsockname()[1], f"u{port}"), ("127.0.0.1", node.port))
                answer = b""
                deadline = loop.time() + 15
                while loop.time() < deadline and not received:
                    try:
                        answer = await asyncio.wait_for(loop.sock_recv(phone, 4096), 0.2)
                    except asyncio.TimeoutError:
                        continue
                    if not answer.startswith(b"SIP/2.0 1"):
                        break
                return received, answer
            finally:
                await node.close()
        finally:
            phone.close()
            server.close()

    received, answer = run(scenario(theirs), loop="asyncio")
    assert received == [] and answer.startswith(b"SIP/2.0 503"), answer
    received, _ = run(scenario(ours), loop="asyncio")
    assert received, "the trusted upstream got the REGISTER"
    text = received[0].decode()
    assert "Via: SIP/2.0/TLS 127.0.0.1:" in text and ";alias" in text and "transport=tls" in text, text


def test_tls_connections_meet_the_caps_and_a_silent_handshake_is_dropped(tmp_path):
    # TLS connections meet the per-address cap (refused at accept: the handshake never ends); a
    # client that never sends its ClientHello is dropped after handshake_timeout.
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("node")
    tls = TlsSettings(enabled=True, port=0, certificate=str(leaf.certificate), key=str(leaf.key),
                      handshake_timeout=0.5)
    context = ssl.create_default_context(cafile=str(ca.ca))

    async def scenario():
        node = SipNode(SipSettings(host="127.0.0.1", port=0, tcp_max_connections_per_address=3), tls=tls)
        await node.start()
        try:
            silent_r, _ = await asyncio.open_connection("127.0.0.1", node.tls_port)
            assert await asyncio.wait_for(silent_r.read(), 5) == b""  # no ClientHello: dropped
            kept = [await asyncio.open_connection("127.0.0.1", node.tls_port, ssl=context) for _ in range(3)]
            await refused_tls(node.tls_port, context)  # the fourth from one address
            await async_wait_until(lambda: node.stats()["tcp_connections"] == 3, what="3 TLS connections")
            assert node.stats()["tcp_refused_per_address"] == 1
            for _, writer in kept:
                writer.close()
        finally:
            await node.close()

    run(scenario(), loop="uvloop")
    run(scenario(), loop="asyncio")


def test_tls_handshakes_in_progress_count_against_the_caps(tmp_path):
    # Issue 10, item 4: a handshake holds a descriptor from accept, so the caps count it from
    # there; clients that connect and never say ClientHello cannot hold descriptors beyond the
    # per-address cap, and their places come back when handshake_timeout drops them.
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("node")
    tls = TlsSettings(enabled=True, port=0, certificate=str(leaf.certificate), key=str(leaf.key),
                      handshake_timeout=1.0)
    context = ssl.create_default_context(cafile=str(ca.ca))

    async def scenario():
        node = SipNode(SipSettings(host="127.0.0.1", port=0, tcp_max_connections_per_address=2), tls=tls)
        await node.start()
        try:
            silent = [await asyncio.open_connection("127.0.0.1", node.tls_port) for _ in range(2)]
            await asyncio.sleep(0.2)  # both accepted: two handshakes in progress
            over_r, _ = await asyncio.open_connection("127.0.0.1", node.tls_port)
            assert await asyncio.wait_for(over_r.read(), 5) == b""  # refused at accept
            assert node.stats()["tcp_refused_per_address"] == 1
            for reader, _ in silent:  # handshake_timeout drops them...
                assert await asyncio.wait_for(reader.read(), 5) == b""
            # ...and gives their places back: two real TLS clients now get in.
            kept = [await asyncio.open_connection("127.0.0.1", node.tls_port, ssl=context) for _ in range(2)]
            await async_wait_until(lambda: node.stats()["tcp_connections"] == 2, what="2 TLS connections")
            for _, writer in kept + silent:
                writer.close()
        finally:
            await node.close()

    run(scenario(), loop="uvloop")
    run(scenario(), loop="asyncio")


async def refused_tls(port: int, context: ssl.SSLContext) -> None:
    """A TLS connection the node refuses: closed at accept, so the handshake (or the first read,
    if the client's side of the handshake finished first) ends in a reset or an EOF."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ConnectionError, ssl.SSLError):
        return
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    except (ConnectionError, ssl.SSLError):
        pass
    writer.close()
