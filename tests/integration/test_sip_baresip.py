"""Real softphones through the node: baresip (Debian `baresip-core`), over UDP and TCP, registers,
calls, answers and hangs up through the node, standalone and inline to Kamailio, and the node
charges what the licensing rules say.

Media is generated (bridged audio, fake video) and flows between the phones directly; the node
sees signalling only. Each phone runs for a fixed time (`-t`) and hangs up when it quits, which is
how baresip ends its calls without a console."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import need
from tests.integration.peers import MeterProcess, stop_process, wait_until

pytestmark = pytest.mark.integration

ITSP_HOST = "127.0.0.2"  # Linux answers on all of 127/8: the third-party caller gets its own address


def _free_pair(host: str) -> int:
    """A port p with p and p+1 free (baresip binds TLS on the SIP port + 1)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((host, port))
                b.bind((host, port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


class Baresip:
    def __init__(self, workdir: Path, name: str, proxy: int, *, host: str = "127.0.0.1",
                 register: bool = True, video: bool = True, transport: str = "udp"):
        self.name, self.host, self.port = name, host, _free_pair(host)
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        video_modules = "module vp8.so\nmodule fakevideo.so\n" if video else ""
        (self.dir / "config").write_text(
            f"poll_method epoll\nsip_listen {host}:{self.port}\n"
            "audio_player aubridge,nil\naudio_source aubridge,nil\naudio_alert aubridge,nil\n"
            "video_source fakevideo,nil\nvideo_display fakevideo,nil\n"
            "module_path /usr/lib/baresip/modules\n"
            "module stdio.so\nmodule g711.so\nmodule aubridge.so\n" + video_modules +
            "module_app account.so\nmodule_app menu.so\n")
        regint = 120 if register else 0
        (self.dir / "accounts").write_text(
            f"<sip:{name}@127.0.0.1:{proxy};transport={transport}>;regint={regint};answermode=auto;"
            f"audio_codecs=PCMU;outbound=\"sip:127.0.0.1:{proxy};transport={transport}\"\n")
        self.proc: subprocess.Popen | None = None

    def start(self, seconds: int, *commands: str) -> "Baresip":
        argv = [need("baresip"), "-4", "-s", "-f", str(self.dir), "-t", str(seconds)]
        for command in commands:
            argv += ["-e", command]
        self.log = open(self.dir / "baresip.log", "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        return self

    def log_text(self) -> str:
        return (self.dir / "baresip.log").read_bytes().decode("utf-8", "replace")

    def stop(self) -> None:
        stop_process(self.proc, 5)
        if hasattr(self, "log"):
            self.log.close()


@pytest.fixture(params=["udp", "tcp", "udp-2-workers"])
def lab(tmp_path, request):
    """The node with one process (UDP or TCP phones), or with two SIP workers (issue 11: UDP only)."""
    transport, _, workers = request.param.partition("-")
    sip = {"workers": 2, "tcp": False} if workers else {}
    node = MeterProcess(tmp_path / "node", sip=sip, zones=[
        {"name": "itsp", "kind": "third_party_sip", "peers": [f"{ITSP_HOST}/32"]}]).start()
    phones: list[Baresip] = []

    def phone(name: str, **kw) -> Baresip:
        made = Baresip(tmp_path, name, node.sip_port, transport=transport, **kw)
        phones.append(made)
        return made

    yield node, phone
    for made in phones:
        made.stop()
    rc = node.stop()
    assert rc == 0, f"node exited with {rc}: {node.log_tail()}"


def _register_from(port: int, user: str, proxy: int, expires: int) -> int:
    """REGISTER (or unregister) sip:<user>@127.0.0.1 through the node from 127.0.0.1:<port>, the
    address a baresip phone will use; returns the final status."""
    from tests.sipclient import Phone

    phone = Phone(user, "127.0.0.1", port, domain="127.0.0.1")
    req = phone.register(expires, call_id=f"pre-{user}@127.0.0.1", cseq=1 if expires else 2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        s.settimeout(10)
        s.sendto(req.to_bytes(), ("127.0.0.1", proxy))
        while True:
            status = int(s.recv(65535).split(b" ", 2)[1])
            if status >= 200:
                return status


def _the_call(node, caller: str) -> dict | None:
    calls = [c for c in node.api("calls") if c["caller"] == f"sip:{caller}@127.0.0.1"]
    return calls[0] if calls and calls[0]["state"] == "confirmed" else None


def _rms(node) -> float:
    return node.api("licenses")["licenses"]["rms"]["in_use"]


def test_baresip_phones_register_call_and_hang_up_through_the_node(lab):
    node, phone = lab
    bob = phone("bob").start(40)
    alice = phone("alice").start(40)
    # R1/R2/R9: each phone's alias takes a room license (baresip is no EX/DX/Movi).
    wait_until(lambda: len(node.api("registrations")) == 2, 15,
               f"both phones registered (bob: {bob.log_text()[-500:]})")
    assert {r["license"] for r in node.api("registrations")} == {"room"}

    # C1: registered to registered costs no RMS; audio + video SDP makes it a video call (C5).
    caller = phone("carol").start(8, "/dial sip:bob@127.0.0.1")
    carol_registered = lambda: any(r["alias"] == "sip:carol@127.0.0.1" for r in node.api("registrations"))
    wait_until(carol_registered, 10, "carol registered")
    wait_until(lambda: _the_call(node, "carol") is not None, 10,
               f"carol's call confirmed (carol: {caller.log_text()[-800:]})")
    call = _the_call(node, "carol")
    assert call["callee"] == "sip:bob@127.0.0.1" and call["units"] == 0 and "C1" in call["rules"]
    wait_until(lambda: "Call established" in caller.log_text(), 5, "carol to see the call established")
    # carol quits: baresip sends BYE, the call is released, her registration goes with Expires 0.
    wait_until(lambda: node.api("calls") == [], 20, "the call released after carol's BYE")
    wait_until(lambda: not carol_registered(), 10, "carol unregistered on quitting")
    assert alice.proc.poll() is None and bob.proc.poll() is None


# UDP only: baresip dials TCP from 127.0.0.1 whatever it listens on, and zones match the peer's address.
@pytest.mark.parametrize("lab", ["udp"], indirect=True)
def test_a_third_party_softphone_pays_rms_video_whole_audio_half(lab):
    node, phone = lab
    phone("bob").start(60)
    wait_until(lambda: len(node.api("registrations")) == 1, 15, "bob registered")

    # C2/C4: a video call from the third-party SIP zone to a registered alias takes one whole RMS.
    video = phone("itsp-video", host=ITSP_HOST, register=False).start(10, "/dial sip:bob@127.0.0.1")
    wait_until(lambda: _the_call(node, "itsp-video") is not None, 10,
               f"the video call confirmed ({video.log_text()[-800:]})")
    call = _the_call(node, "itsp-video")
    assert call["caller_zone"] == "third_party_sip" and call["license"] == "rms" and call["call_class"] == "video"
    assert _rms(node) == 1.0
    wait_until(lambda: node.api("calls") == [], 20, "the video call released")
    assert _rms(node) == 0

    # C4/C5/C6: an audio-only phone (one m= line each way) settles at half a license.
    audio = phone("itsp-audio", host=ITSP_HOST, register=False, video=False).start(10, "/dial sip:bob@127.0.0.1")
    wait_until(lambda: _the_call(node, "itsp-audio") is not None, 10,
               f"the audio call confirmed ({audio.log_text()[-800:]})")
    call = _the_call(node, "itsp-audio")
    assert call["call_class"] == "audio_sip", call
    assert _rms(node) == 0.5
    wait_until(lambda: node.api("calls") == [], 20, "the audio call released")
    assert _rms(node) == 0


def test_baresip_phones_through_the_node_inline_to_kamailio(kamailio, tmp_path):
    # The lab set-up: phones register through the node to the lab's registrar (Kamailio), which
    # lists them (Path: the node); the node learns the bindings from Kamailio's 200 OK and charges
    # them (R1, R2); a call between them passes the node and is a registered call (C1).
    node = MeterProcess(tmp_path / "node", sip={"mode": "inline", "upstream": f"127.0.0.1:{kamailio.port}"}).start()
    phones = []
    try:
        bob = Baresip(tmp_path, "bs-inline-bob", node.sip_port).start(40)
        phones.append(bob)
        wait_until(lambda: "bs-inline-bob" in " ".join(kamailio.contacts()), 15,
                   f"bob's binding in Kamailio ({bob.log_text()[-500:]})")
        wait_until(lambda: [r["alias"] for r in node.api("registrations")] == ["sip:bs-inline-bob@127.0.0.1"], 10,
                   "the node to learn bob's binding from Kamailio's 200 OK")
        assert node.api("registrations")[0]["license"] == "room"

        # baresip dials at start-up, racing its own REGISTER through Kamailio; a caller counts as
        # registered only over a flow the upstream has confirmed (RFC 5626 style), so carol's port
        # is registered beforehand, as a phone that booted earlier would be.
        carol = Baresip(tmp_path, "bs-inline-carol", node.sip_port)
        assert _register_from(carol.port, "bs-inline-carol", node.sip_port, 120) == 200
        carol.start(8, "/dial sip:bs-inline-bob@127.0.0.1")
        phones.append(carol)
        wait_until(lambda: "bs-inline-carol" in " ".join(kamailio.contacts()), 10, "carol's binding in Kamailio")
        wait_until(lambda: _the_call(node, "bs-inline-carol") is not None, 15,
                   f"carol's call confirmed through the node ({carol.log_text()[-800:]})")
        call = _the_call(node, "bs-inline-carol")
        assert call["callee"] == "sip:bs-inline-bob@127.0.0.1" and call["units"] == 0 and "C1" in call["rules"]
        wait_until(lambda: "Call established" in carol.log_text(), 5, "carol to see the call established")
        wait_until(lambda: node.api("calls") == [], 20, "the call released after carol's BYE")
        wait_until(lambda: carol.proc.poll() is not None, 20, "carol to quit")
        assert _register_from(carol.port, "bs-inline-carol", node.sip_port, 0) == 200
        # carol quits: her Expires 0 goes through the node to Kamailio, and her license is released.
        wait_until(lambda: "bs-inline-carol" not in " ".join(kamailio.contacts()), 10, "carol gone from Kamailio")
        wait_until(lambda: len(node.api("registrations")) == 1, 10, "carol's license released")
    finally:
        for phone in phones:
            phone.stop()
        rc = node.stop()
    assert rc == 0, node.log_tail()
