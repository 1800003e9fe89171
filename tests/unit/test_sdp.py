"""Unit tests of meter.codecs.sdp (RFC 4566 parsing, RFC 3264 offer/answer counting for rule C5)."""

from __future__ import annotations

import pytest

from meter.codecs import sdp
from meter.codecs.sdp import SDPError

OFFER_AV = (
    "v=0\r\n"
    "o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    "s=-\r\n"
    "c=IN IP4 192.0.2.10\r\n"
    "b=AS:2048\r\n"
    "t=0 0\r\n"
    "a=sendrecv\r\n"
    "m=audio 49170 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "m=video 51372 RTP/AVP 97\r\n"
    "b=TIAS:1920000\r\n"
    "a=rtpmap:97 H264/90000\r\n"
    "a=sendonly\r\n"
    "m=application 5070 UDP/BFCP *\r\n"
    "c=IN IP4 192.0.2.11\r\n"
    "a=floorctrl:c-only\r\n"
)


def answer(audio_port=3456, video_port=0, app_port=0, *, direction="sendrecv") -> bytes:
    return (
        "v=0\r\no=bob 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
        f"a={direction}\r\n"
        f"m=audio {audio_port} RTP/AVP 0\r\n"
        f"m=video {video_port} RTP/AVP 97\r\n"
        f"m=application {app_port} UDP/BFCP *\r\n"
    ).encode()


def test_parse_session_and_media():
    s = sdp.parse(OFFER_AV.encode())
    assert (s.version, s.name, s.connection) == (0, "-", "IN IP4 192.0.2.10")
    assert s.origin == "alice 2890844526 2890844526 IN IP4 192.0.2.10"
    assert s.attributes == [("sendrecv", None)] and s.direction == "sendrecv"
    assert [m.kind for m in s.media] == ["audio", "video", "application"]
    audio, video, app = s.media
    assert (audio.port, audio.port_count, audio.proto, audio.formats) == (49170, 1, "RTP/AVP", ["0", "8", "101"])
    assert audio.attribute("rtpmap") == "0 PCMU/8000" and audio.attribute("nothing") is None
    assert audio.connection is None and app.connection == "IN IP4 192.0.2.11"
    assert video.direction == "sendonly" and audio.direction == "sendrecv"
    assert app.formats == ["*"] and not app.disabled
    assert ("b", "TIAS:1920000") in video.other


def test_round_trip():
    s = sdp.parse(OFFER_AV)
    assert sdp.parse(s.to_bytes()) == s
    assert s.to_bytes().decode() == OFFER_AV  # canonical input comes back byte-exact


def test_lf_only_and_no_final_newline_tolerated():
    s = sdp.parse(OFFER_AV.replace("\r\n", "\n").rstrip("\n"))
    assert sdp.parse(OFFER_AV) == s


def test_session_direction_inherited_by_media():
    s = sdp.parse(answer(direction="inactive"))
    assert s.direction == "inactive" and all(m.direction == "inactive" for m in s.media)
    s = sdp.parse(b"v=0\r\nm=audio 1 RTP/AVP 0\r\n")
    assert s.media[0].direction == "sendrecv"


def test_port_count_and_disabled():
    s = sdp.parse(b"v=0\r\nm=video 49170/2 RTP/AVP 31\r\nm=audio 0 RTP/AVP 0\r\n")
    assert s.media[0].port_count == 2 and s.media[1].disabled and not s.media[0].disabled
    assert b"m=video 49170/2 RTP/AVP 31\r\n" in s.to_bytes()


@pytest.mark.parametrize("bad", [
    b"", b"\r\n", b"o=x\r\nv=0\r\n", b"v=1\r\n", b"v=0\r\nnot a line\r\n", b"v=0\r\nm=audio\r\n",
    b"v=0\r\nm=audio x RTP/AVP 0\r\n", b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n", b"v=0\r\nv=0\r\n",
    b"v=0\r\nX=upper\r\n", b"v=0\r\nm=audio 1 RTP/AVP 0\r\no=late\r\n", b"v=0\r\nq=unknown\r\n",
])
def test_parse_rejects(bad):
    with pytest.raises(SDPError) as e:
        sdp.parse(bad)
    assert isinstance(e.value, ValueError) and e.value.reason


def test_parse_rejects_non_text():
    with pytest.raises(SDPError):
        sdp.parse(42)  # type: ignore[arg-type]


# ---- rule C5: negotiated m= lines (RFC 3264 §6) -----------------------------------------------------


def test_c5_video_declined_is_audio_only():
    """C5: offer audio+video+BFCP, answer accepts audio only -> one negotiated m= line, audio."""
    assert sdp.negotiated_media_count(OFFER_AV, answer()) == 1
    assert sdp.is_audio_only(OFFER_AV.encode(), answer())


def test_c5_video_accepted_is_not_audio_only():
    """C5: any further accepted m= line (video, or BFCP presentation) makes it a video call."""
    assert sdp.negotiated_media_count(OFFER_AV, answer(video_port=5000)) == 2
    assert not sdp.is_audio_only(OFFER_AV, answer(video_port=5000))
    assert not sdp.is_audio_only(OFFER_AV, answer(app_port=5070))


def test_c5_offer_side_zero_port_does_not_count():
    """C5: a stream the offerer disabled is not negotiated even if the answer echoes a port."""
    offer = OFFER_AV.replace("m=video 51372", "m=video 0")
    assert sdp.negotiated_media_count(offer, answer(video_port=5000)) == 1
    assert sdp.is_audio_only(sdp.parse(offer), sdp.parse(answer(video_port=5000)))


def test_c5_single_video_line_is_not_audio_only():
    offer = b"v=0\r\nm=video 5000 RTP/AVP 97\r\n"
    assert sdp.negotiated_media_count(offer, offer) == 1 and not sdp.is_audio_only(offer, offer)


def test_c5_nothing_negotiated():
    assert sdp.negotiated_media_count(OFFER_AV, answer(audio_port=0)) == 0
    assert not sdp.is_audio_only(OFFER_AV, answer(audio_port=0))


def test_c5_short_answer_counts_only_paired_lines():
    short = b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n"
    assert sdp.negotiated_media_count(OFFER_AV, short) == 1


def test_c5_bad_sdp_raises_sdperror():
    with pytest.raises(SDPError):
        sdp.negotiated_media_count(b"garbage", answer())
