"""Independent check of the RAS codec: Debian's tshark (Wireshark's H.225.0 dissector) reads what we encode.

Every message kind meter.codecs.ras sends is wrapped in a pcap (Ethernet/IPv4/UDP to port 1719,
tests/pcap.py) and dissected by ``tshark -T pdml``. Message kind, sequence number, aliases (every
type), vendor productId/versionId, call identifier, conference ID, bandwidth and the other fields we
set must read back as we meant them, with no malformed-packet or expert warning; and our decoder
must agree with tshark on the same bytes. tshark missing is a failure, not a skip.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meter.codecs import ras, ras_per_fix

pytestmark = pytest.mark.integration

_spec = importlib.util.spec_from_file_location("ras_test_pcap", Path(__file__).resolve().parents[1] / "pcap.py")
pcap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pcap)

CALL = bytes.fromhex("00112233445566778899aabbccddeeff")
CONF = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
VENDOR = ras.Vendor(181, 0, 18, "Room Kit Pro", "CE 9.15.3")
PADDED_VENDOR = ras.Vendor(181, 0, 18, "HDX 8000 HD\x00\x00\x00", "3.1.14\x00")  # as real endpoints send
EP_RAS, EP_CS, GK_RAS = ("192.0.2.10", 1719), ("192.0.2.10", 1720), ("192.0.2.1", 1719)
A = ras.Alias
ALIASES = [A("h323-ID", "room-1"), A("dialledDigits", "4001"), A("url-ID", "h323:room-1@lab.example"),
           A("email-ID", "room-1@lab.example"), A("transportID", "192.0.2.10:1720"),
           A("transportID", "[2001:db8::10]:1720"), A("partyNumber", "4930123456"),
           A("h323-ID", "Salle Émile 会议室")]
DEST = [A("dialledDigits", "4002"), A("h323-ID", "room-2")]
GUID, CONF_ID = ras.guid_str(CALL), ras.guid_str(CONF)


@dataclass
class Case:
    name: str
    data: bytes
    kind: str
    seq: int
    fields: dict[str, list[str]] = field(default_factory=dict)    # tshark field -> every `show`, in order
    choices: dict[str, list[str]] = field(default_factory=dict)   # CHOICE field -> alternative names
    aliases: dict[str, list[ras.Alias]] = field(default_factory=dict)  # alias list field -> aliases


def _vendor_fields(v: ras.Vendor) -> dict[str, list[str]]:
    strip = lambda s: s.strip("\x00")  # tshark shows the string up to the NUL, as we decode it
    return {"h225.productId": [strip(v.product_id)], "h225.versionId": [strip(v.version_id)],
            "h225.t35CountryCode": [str(v.country_code)], "h225.manufacturerCode": [str(v.manufacturer_code)]}


CASES = [
    Case("GRQ", ras.gatekeeper_request(1, ras_address=EP_RAS, aliases=ALIASES, vendor=VENDOR, gatekeeper_id="GK-LAB"),
         "gatekeeperRequest", 1,
         {**_vendor_fields(VENDOR), "h225.gatekeeperIdentifier": ["GK-LAB"], "h225.supportsAssignedGK": ["0"],
          "h225.protocolIdentifier": ["0.0.8.2250.0.7"]},
         aliases={"h225.endpointAlias": ALIASES}),
    Case("GRQ-no-alias", ras.gatekeeper_request(2, ras_address=EP_RAS, vendor=VENDOR), "gatekeeperRequest", 2,
         _vendor_fields(VENDOR)),  # root ends mid-octet: the PER-fix case
    Case("GCF", ras.gatekeeper_confirm(1, ras_address=GK_RAS, gatekeeper_id="GK-LAB"), "gatekeeperConfirm", 1,
         {"h225.gatekeeperIdentifier": ["GK-LAB"], "h225.ipV4": ["192.0.2.1"], "h225.ipV4_port": ["1719"]}),
    Case("GRJ", ras.gatekeeper_reject(1, "resourceUnavailable"), "gatekeeperReject", 1,
         choices={"h225.rejectReason": ["resourceUnavailable"]}),
    Case("RRQ", ras.registration_request(3, call_signal_addresses=[EP_CS], ras_addresses=[EP_RAS], aliases=ALIASES,
                                         vendor=PADDED_VENDOR, gatekeeper_id="GK-LAB", time_to_live=300),
         "registrationRequest", 3,
         {**_vendor_fields(PADDED_VENDOR), "h225.timeToLive": ["300"], "h225.keepAlive": ["0"],
          "h225.willSupplyUUIEs": ["0"], "h225.maintainConnection": ["0"], "h225.supportsAssignedGK": ["0"]},
         aliases={"h225.terminalAlias": ALIASES}),
    Case("RRQ-mcu-10-aliases",
         ras.registration_request(4, call_signal_addresses=[EP_CS], ras_addresses=[EP_RAS], endpoint_type="mcu",
                                  aliases=[A("h323-ID", f"conf-{i}") for i in range(10)], vendor=VENDOR),
         "registrationRequest", 4, {"h225.mc": ["1"], "h225.productId": [VENDOR.product_id]},
         aliases={"h225.terminalAlias": [A("h323-ID", f"conf-{i}") for i in range(10)]}),
    Case("RRQ-keepalive", ras.keep_alive_request(5, endpoint_id="EP-0001", call_signal_addresses=[EP_CS],
                                                 ras_addresses=[EP_RAS], vendor=VENDOR, gatekeeper_id="GK-LAB",
                                                 time_to_live=300),
         "registrationRequest", 5,
         {"h225.keepAlive": ["1"], "h225.endpointIdentifier": ["EP-0001"], "h225.timeToLive": ["300"],
          "h225.productId": [VENDOR.product_id], "h225.h323_ID": []}),
    Case("RCF", ras.registration_confirm(3, endpoint_id="EP-0001", aliases=ALIASES, gatekeeper_id="GK-LAB",
                                         time_to_live=300),
         "registrationConfirm", 3,
         {"h225.endpointIdentifier": ["EP-0001"], "h225.timeToLive": ["300"], "h225.willRespondToIRR": ["0"],
          "h225.maintainConnection": ["0"]},
         aliases={"h225.terminalAlias": ALIASES}),
    Case("RRJ", ras.registration_reject(3), "registrationReject", 3,
         choices={"h225.rejectReason": ["resourceUnavailable"]}),
    Case("RRJ-duplicateAlias", ras.registration_reject(3, "duplicateAlias", duplicate_aliases=ALIASES[:3]),
         "registrationReject", 3, choices={"h225.rejectReason": ["duplicateAlias"]},
         aliases={"h225.duplicateAlias": ALIASES[:3]}),
    Case("URQ", ras.unregistration_request(6, call_signal_addresses=[EP_CS], aliases=ALIASES[:2],
                                           endpoint_id="EP-0001", reason="ttlExpired"),
         "unregistrationRequest", 6, {"h225.endpointIdentifier": ["EP-0001"]},
         choices={"h225.reason": ["ttlExpired"]}, aliases={"h225.endpointAlias": ALIASES[:2]}),
    Case("UCF", ras.unregistration_confirm(6), "unregistrationConfirm", 6),
    Case("URJ", ras.unregistration_reject(6), "unregistrationReject", 6,
         choices={"h225.rejectReason": ["notCurrentlyRegistered"]}),
    Case("ARQ", ras.admission_request(8, endpoint_id="EP-0001", src_aliases=ALIASES[:2], dest_aliases=DEST,
                                      call_identifier=CALL, conference_id=CONF, bandwidth=7680,
                                      call_reference_value=77, dest_call_signal_address=("192.0.2.20", 1720)),
         "admissionRequest", 8,
         {"h225.bandWidth": ["7680"], "h225.guid": [GUID], "h225.conferenceID": [CONF_ID],
          "h225.callReferenceValue": ["77"], "h225.answerCall": ["0"], "h225.canMapAlias": ["0"],
          "h225.willSupplyUUIEs": ["0"], "h225.canMapSrcAlias": ["0"], "h225.endpointIdentifier": ["EP-0001"]},
         choices={"h225.callType": ["pointToPoint"]},
         aliases={"h225.srcInfo": ALIASES[:2], "h225.destinationInfo": DEST}),
    Case("ARQ-answer", ras.admission_request(9, endpoint_id="EP-0002", src_aliases=DEST[:1], call_identifier=CALL,
                                             conference_id=CONF, bandwidth=3840, call_reference_value=78,
                                             answer_call=True),
         "admissionRequest", 9, {"h225.answerCall": ["1"], "h225.bandWidth": ["3840"], "h225.guid": [GUID]},
         aliases={"h225.srcInfo": DEST[:1]}),
    Case("ACF", ras.admission_confirm(8, bandwidth=7680, dest_call_signal_address=("192.0.2.20", 1720),
                                      dest_aliases=DEST, irr_frequency=30),
         "admissionConfirm", 8,
         {"h225.bandWidth": ["7680"], "h225.irrFrequency": ["30"], "h225.ipV4": ["192.0.2.20"],
          "h225.willRespondToIRR": ["0"], "h225.setup": ["0"], "h225.notify": ["0"]},
         choices={"h225.callModel": ["direct"]}, aliases={"h225.destinationInfo": DEST}),
    Case("ARJ", ras.admission_reject(8), "admissionReject", 8, choices={"h225.rejectReason": ["resourceUnavailable"]}),
    Case("BRQ", ras.bandwidth_request(10, endpoint_id="EP-0001", conference_id=CONF, call_identifier=CALL,
                                      call_reference_value=77, bandwidth=15360, answered_call=True),
         "bandwidthRequest", 10,
         {"h225.bandWidth": ["15360"], "h225.guid": [GUID], "h225.conferenceID": [CONF_ID],
          "h225.answeredCall": ["1"]}),
    Case("BCF", ras.bandwidth_confirm(10, bandwidth=15360), "bandwidthConfirm", 10, {"h225.bandWidth": ["15360"]}),
    Case("BRJ", ras.bandwidth_reject(10, allowed_bandwidth=7680), "bandwidthReject", 10,
         {"h225.allowedBandWidth": ["7680"]}, choices={"h225.rejectReason": ["insufficientResources"]}),
    Case("DRQ", ras.disengage_request(11, endpoint_id="EP-0001", conference_id=CONF, call_identifier=CALL,
                                      call_reference_value=77),
         "disengageRequest", 11,
         {"h225.guid": [GUID], "h225.conferenceID": [CONF_ID], "h225.answeredCall": ["0"],
          "h225.callReferenceValue": ["77"]},
         choices={"h225.disengageReason": ["normalDrop"]}),
    Case("DCF", ras.disengage_confirm(11), "disengageConfirm", 11),
    Case("DRJ", ras.disengage_reject(11), "disengageReject", 11, choices={"h225.rejectReason": ["notRegistered"]}),
    Case("LRQ", ras.location_request(13, dest_aliases=DEST, reply_address=GK_RAS, source_aliases=ALIASES[:1],
                                     call_identifier=CALL, bandwidth=7680),
         "locationRequest", 13,
         {"h225.guid": [GUID], "h225.bandWidth": ["7680"], "h225.canMapAlias": ["0"], "h225.canMapSrcAlias": ["0"]},
         aliases={"h225.destinationInfo": DEST, "h225.sourceInfo": ALIASES[:1]}),
    Case("LCF", ras.location_confirm(13, call_signal_address=("192.0.2.20", 1720), ras_address=("192.0.2.20", 1719),
                                     dest_aliases=DEST),
         "locationConfirm", 13, {"h225.ipV4_port": ["1720", "1719"]}, aliases={"h225.destinationInfo": DEST}),
    Case("LRJ", ras.location_reject(13), "locationReject", 13, choices={"h225.rejectReason": ["notRegistered"]}),
    Case("IRQ", ras.info_request(14, call_identifier=CALL, call_reference_value=77), "infoRequest", 14,
         {"h225.guid": [GUID], "h225.callReferenceValue": ["77"]}),
    Case("IRR", ras.info_request_response(14, endpoint_id="EP-0001", ras_address=EP_RAS, call_signal_addresses=[EP_CS],
                                          aliases=ALIASES[:2], vendor=VENDOR, unsolicited=True,
                                          calls=[ras.CallInfo(CALL, CONF, 77, 7680, True)]),
         "infoRequestResponse", 14,
         {"h225.guid": [GUID], "h225.conferenceID": [CONF_ID], "h225.bandWidth": ["7680"],
          "h225.productId": [VENDOR.product_id], "h225.unsolicited": ["1"], "h225.needResponse": ["0"]},
         aliases={"h225.endpointAlias": ALIASES[:2]}),
    Case("RIP", ras.request_in_progress(15, delay_ms=4000), "requestInProgress", 15, {"h225.delay": ["4000"]}),
    Case("XRS", ras.unknown_message_response(16, b"\x99\x01"), "unknownMessageResponse", 16),
]

ALL_SENT = {"GRQ", "GCF", "GRJ", "RRQ", "RCF", "RRJ", "URQ", "UCF", "URJ", "ARQ", "ACF", "ARJ", "BRQ", "BCF", "BRJ",
            "DRQ", "DCF", "DRJ", "LRQ", "LCF", "LRJ", "IRQ", "IRR"}

#: tshark field -> our alias type (transportID and partyNumber are read from their sub-fields).
_ALIAS_LEAVES = {"h225.h323_ID": "h323-ID", "h225.dialledDigits": "dialledDigits", "h225.url_ID": "url-ID",
                 "h225.email_ID": "email-ID", "h225.publicNumberDigits": "partyNumber"}


def _tshark_packets(datagrams: list, workdir: Path) -> list[ET.Element]:
    exe = shutil.which("tshark")
    assert exe, "tshark not found: install Debian's tshark package (apt-get install -y tshark)"
    path = workdir / "ras.pcap"
    pcap.write_pcap(path, datagrams)
    out = subprocess.run([exe, "-r", str(path), "-T", "pdml"], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    packets = ET.fromstring(out.stdout).findall("packet")
    assert len(packets) == len(datagrams), "tshark did not read every frame"
    return packets


@pytest.fixture(scope="module")
def dissected(tmp_path_factory) -> dict[str, ET.Element]:
    packets = _tshark_packets([pcap.Datagram(c.data, src=EP_RAS, dst=GK_RAS) for c in CASES],
                              tmp_path_factory.mktemp("ras_tshark"))
    return {case.name: packet for case, packet in zip(CASES, packets)}


def _h225(packet: ET.Element) -> ET.Element:
    proto = packet.find("proto[@name='h225']")
    assert proto is not None, "tshark did not dissect the frame as H.225.0 RAS"
    return proto


def _problems(packet: ET.Element) -> list[str]:
    return [f.get("showname") or f.get("name") for f in packet.iter()
            if (f.get("name") or "").startswith(("_ws.malformed", "_ws.expert"))]


def _alternative(f: ET.Element) -> str:
    # showname "rejectReason: resourceUnavailable (8)" -> "resourceUnavailable"
    return f.get("showname", "").split(": ", 1)[-1].rsplit(" (", 1)[0]


def _aliases_in(container: ET.Element) -> list[ras.Alias]:
    found = []
    for f in container.iter("field"):
        name = f.get("name")
        if name in _ALIAS_LEAVES:
            found.append(ras.Alias(_ALIAS_LEAVES[name], f.get("show")))
        elif name == "h225.transportID":
            ip = next(x.get("show") for x in f.iter("field") if x.get("name") in ("h225.ipV4", "h225.ipV6"))
            port = next(x.get("show") for x in f.iter("field") if x.get("name") in ("h225.ipV4_port", "h225.ipV6_port"))
            found.append(ras.Alias("transportID", f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"))
    return found


def _fields(proto: ET.Element, name: str) -> list[ET.Element]:
    # hide="yes": fields Wireshark generates, e.g. the ARQ's guid repeated in the ACF that answers it
    return [f for f in proto.iter("field") if f.get("name") == name and f.get("hide") != "yes"]


def _shows(proto: ET.Element, name: str) -> list[str]:
    return [f.get("show") for f in _fields(proto, name)]


def _kind(proto: ET.Element) -> str:
    [ras_message] = _fields(proto, "h225.RasMessage")
    return _alternative(ras_message)


def test_every_message_kind_we_send_is_covered():
    assert ALL_SENT <= {ras.SHORT_NAMES[c.kind] for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tshark_reads_back_what_we_encoded(case, dissected):
    packet = dissected[case.name]
    proto = _h225(packet)
    assert _problems(packet) == []
    assert _kind(proto) == case.kind
    assert _shows(proto, "h225.requestSeqNum") == [str(case.seq)]
    for name, expected in case.fields.items():
        assert _shows(proto, name) == expected, name
    for name, expected in case.choices.items():
        assert [_alternative(f) for f in _fields(proto, name)] == expected, name
    for name, expected in case.aliases.items():
        [container] = _fields(proto, name)
        assert _aliases_in(container) == expected, name


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_our_decoder_agrees_with_tshark(case, dissected):
    proto = _h225(dissected[case.name])
    msg = ras.decode(case.data)
    assert msg.kind == case.kind and msg.request_seq_num == case.seq
    ours = {"h225.guid": [ras.guid_str(g) for g in [msg.call_identifier] + [c.call_identifier for c in msg.calls]
                          if g is not None],
            "h225.productId": [msg.vendor.product_id] if msg.vendor and msg.vendor.product_id else []}
    for name, values in ours.items():
        assert _shows(proto, name) == values, name
    bandwidths = [b for b in [msg.bandwidth] + [c.bandwidth for c in msg.calls] if b is not None]
    assert _shows(proto, "h225.bandWidth") + _shows(proto, "h225.allowedBandWidth") == [str(b) for b in bandwidths]
    senders = [f for name in ("h225.terminalAlias", "h225.endpointAlias", "h225.srcInfo", "h225.sourceInfo")
               for f in _fields(proto, name)]
    assert list(msg.aliases) == (_aliases_in(senders[0]) if senders else [])
    destination = _fields(proto, "h225.destinationInfo")
    assert list(msg.destination) == (_aliases_in(destination[0]) if destination else [])


def test_tshark_rejects_pycrate_unpatched_per_and_accepts_the_fix(tmp_path):
    """The pycrate 0.8.1 aligned-PER bug seen by Wireshark: unpatched GRQ/ARQ/DRQ/ACF are malformed."""
    encoders = {
        "GRQ": lambda: ras.gatekeeper_request(2, ras_address=EP_RAS, vendor=VENDOR),
        "ARQ": lambda: ras.admission_request(8, endpoint_id="EP-0001", src_aliases=ALIASES[:2], dest_aliases=DEST,
                                             call_identifier=CALL, conference_id=CONF, bandwidth=7680,
                                             call_reference_value=77),
        "DRQ": lambda: ras.disengage_request(11, endpoint_id="EP-0001", conference_id=CONF, call_identifier=CALL,
                                             call_reference_value=77),
        "ACF": lambda: ras.admission_confirm(8, bandwidth=7680, dest_call_signal_address=("192.0.2.20", 1720)),
    }
    ras.load()
    with ras_per_fix.unpatched():
        buggy = {k: enc() for k, enc in encoders.items()}
    fixed = {k: enc() for k, enc in encoders.items()}
    names = list(encoders)
    packets = _tshark_packets([pcap.Datagram(buggy[k]) for k in names] + [pcap.Datagram(fixed[k]) for k in names],
                              tmp_path)
    for name, packet in zip(names, packets[: len(names)]):
        assert buggy[name] != fixed[name]
        assert _problems(packet), f"tshark accepted pycrate's unpatched {name}"
    for name, packet in zip(names, packets[len(names):]):
        assert _problems(packet) == [], f"tshark rejects the fixed {name}"
        assert ras.SHORT_NAMES[_kind(_h225(packet))] == name
