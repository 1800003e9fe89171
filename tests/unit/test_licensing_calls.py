"""Call classification, rules C1-C11 (licensing-rules.md)."""

import pytest

from meter.licensing.calls import CallCharge, CallFacts, classify_call
from meter.licensing.model import License, Media


def call(role="C", caller=("local", "C", "sip"), callee=("local", "C", "sip"), **flags) -> CallCharge:
    return classify_call(CallFacts(role, *caller, *callee, **flags))


REGISTERED_HERE = ("local", "C", "sip")
UNIFIED_CM = ("unified_cm", "unified_cm", "sip")
EXTERNAL_FROM_C = ("traversal", "", "sip")   # an unregistered B2B party, seen from C
EXTERNAL_ON_E = ("external", "", "sip")


# ---- C1 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("caller, callee", [
    (REGISTERED_HERE, ("local", "C", "sip")),
    (REGISTERED_HERE, UNIFIED_CM),                      # through a neighbour zone
    (("traversal", "E", "sip"), REGISTERED_HERE),       # through the traversal zone
    (REGISTERED_HERE, ("cisco_conferencing", "", "sip")),  # Cisco Meeting Server
    (REGISTERED_HERE, ("cloud_cmr", "", "sip")),        # collaboration cloud
])
def test_c1_registered_calls_cost_no_rms_but_use_the_node(caller, callee):
    """C1: no RMS between registered endpoints, to Cisco conferencing or to the cloud; the call
    still counts against the node's physical capacity."""
    charge = call("C", caller, callee, m_lines=2)
    assert charge.license is License.NONE and charge.units == 0
    assert charge.call_license is License.NONE
    assert charge.physical
    assert "C1" in charge.rules


def test_c1_mra_calls_cost_no_rms_on_either_node():
    """C1: Unified CM remote sessions (MRA) through the C/E pair cost nothing."""
    for role, caller in (("E", ("local", "", "sip")), ("C", ("traversal", "", "sip"))):
        charge = call(role, caller, UNIFIED_CM, mra=True, m_lines=2)
        assert (charge.license, charge.units, charge.rules) == (License.NONE, 0, ("C1",))


def test_c1_mcu_not_managed_by_conductor_costs_rms_on_c():
    """C1: an MCU not managed by Conductor is the exception: 1 RMS on C."""
    charge = call("C", REGISTERED_HERE, ("cisco_conferencing", "", "h323"), conductor="unmanaged", m_lines=2)
    assert (charge.license, charge.units, charge.payer) == (License.RMS, 2, "C")
    assert charge.rules[:2] == ("C1", "C2")


# ---- C2 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("far, payer", [
    (("external", "", "sip"), "E"),         # business to business
    (("jabber_guest", "", "sip"), "E"),     # business to consumer
    (("lync_gateway", "", "sip"), "C"),     # interop gateway: Microsoft Lync / Skype
    (("third_party_sip", "", "sip"), "C"),  # third-party call control
])
def test_c2_every_other_call_costs_one_rms_where_the_spec_says(far, payer):
    """C2: B2B and Jabber Guest on E, interoperability-gateway calls on C."""
    for role in ("C", "E"):
        charge = call(role, REGISTERED_HERE, far, m_lines=2)
        assert charge.call_license is License.RMS and charge.payer == payer
        assert charge.units == (2 if role == payer else 0)
        assert "C2" in charge.rules


def test_c2_inbound_b2b_call_costs_rms_on_e_too():
    """C2: an unregistered caller from outside is a B2B call, charged on E."""
    charge = call("E", EXTERNAL_ON_E, ("traversal", "C", "sip"), m_lines=2)
    assert (charge.license, charge.units, charge.payer) == (License.RMS, 2, "E")


# ---- C3: the table, row by row, transcribed from licensing-rules.md ------------------------

# caller registered at, callee registered at, RMS on C ("-": C not on the path), RMS on E
SPEC_C3 = [
    ("Unified CM", "C (Lync gateway)", 1, 0),
    ("Unified CM", "external", 0, 1),
    ("Unified CM", "third-party gatekeeper", 1, 0),
    ("C", "external", 0, 1),
    ("C (remote SIP, proxied via E)", "external", 0, 1),
    ("C (SIP)", "third-party gatekeeper", 1, 0),
    ("C (H.323)", "third-party gatekeeper", 1, 0),
    ("C (remote SIP, proxied via E)", "third-party gatekeeper", 1, 0),
    ("C", "C (Lync gateway)", 1, 0),
    ("C (remote)", "C (Lync gateway)", 1, 0),
    ("C (SIP)", "third-party SIP server", 1, 0),
    ("C (H.323)", "third-party SIP server", 1, 0),
    ("E (SIP)", "external", "-", 1),
    ("E (H.323)", "external", "-", 1),
]


def _caller(text: str, role: str) -> tuple[tuple[str, str, str], bool]:
    protocol = "h323" if "H.323" in text else "sip"
    if text == "Unified CM":
        return UNIFIED_CM, False
    if text.startswith("E"):
        return ("local", "E", protocol), False
    remote = "remote" in text
    # A remote endpoint reaches C through E; seen from E, C's endpoints are behind the traversal zone.
    zone = "traversal" if (remote and role == "C") or (not remote and role == "E") else "local"
    return (zone, "C", protocol), remote


def _callee(text: str, role: str) -> tuple[str, str, str]:
    if text == "external":
        return ("traversal" if role == "C" else "external", "", "sip")
    if text == "third-party gatekeeper":
        return ("third_party_gatekeeper", "", "h323")
    if text == "third-party SIP server":
        return ("third_party_sip", "", "sip")
    return ("lync_gateway", "", "sip")


@pytest.mark.parametrize("caller, callee, on_c, on_e", SPEC_C3, ids=[f"{r[0]}->{r[1]}" for r in SPEC_C3])
def test_c3_table_row_by_row(caller, callee, on_c, on_e):
    """C3: where the RMS is charged, by where caller and callee are registered."""
    for role, expected in (("C", on_c), ("E", on_e)):
        if expected == "-":
            continue
        caller_side, proxied = _caller(caller, role)
        callee_side = _callee(callee, role)
        interworked = role == "C" and caller_side[2] != callee_side[2] and expected == 1
        charge = call(role, caller_side, callee_side, m_lines=2, caller_proxied=proxied, interworked=interworked)
        assert charge.units == 2 * expected, (role, charge)
        assert charge.license is (License.RMS if expected else License.NONE)
        assert charge.call_license is License.RMS
        assert "C3" in charge.rules


# ---- C4, C5, C6 ----------------------------------------------------------------------------

def test_c4_audio_only_sip_takes_half_an_rms_other_audio_a_whole_one():
    """C4: one RMS carries one video call or two audio-only SIP calls; audio-only H.323 or
    interworked calls take a whole license."""
    sip = call("E", REGISTERED_HERE, EXTERNAL_ON_E, m_lines=1)
    h323 = call("E", ("local", "E", "h323"), ("external", "", "h323"), m_lines=1)
    interworked = call("E", REGISTERED_HERE, ("external", "", "h323"), m_lines=1, interworked=True)
    video = call("E", REGISTERED_HERE, EXTERNAL_ON_E, m_lines=2)
    assert (sip.media, sip.units) == (Media.AUDIO_SIP, 1)
    assert (h323.media, h323.units) == (Media.AUDIO_OTHER, 2)
    assert (interworked.media, interworked.units) == (Media.AUDIO_OTHER, 2)
    assert (video.media, video.units) == (Media.VIDEO, 2)
    assert all("C4" in c.rules for c in (sip, h323, interworked, video))


@pytest.mark.parametrize("m_lines, media, units", [(1, Media.AUDIO_SIP, 1), (2, Media.VIDEO, 2), (3, Media.VIDEO, 2)])
def test_c5_audio_only_means_exactly_one_m_line(m_lines, media, units):
    """C5: a 'phone' call whose SDP carries a further m= line (e.g. BFCP, video) takes a video license."""
    charge = call("E", REGISTERED_HERE, EXTERNAL_ON_E, m_lines=m_lines)
    assert (charge.media, charge.units) == (media, units)


def test_c6_a_call_being_set_up_counts_as_video():
    """C6: before set-up completes (no negotiated SDP) an audio-only SIP call is charged as video."""
    charge = call("E", REGISTERED_HERE, EXTERNAL_ON_E, m_lines=None)
    assert (charge.media, charge.units) == (Media.SETUP, 2)
    assert "C6" in charge.rules and "C4" not in charge.rules


# ---- C8, C9, C10, C11 ----------------------------------------------------------------------

def test_c8_conductor_costs_rms_only_as_b2bua():
    """C8: behind TelePresence Conductor, licenses are consumed only when it is a B2BUA."""
    b2bua = call("C", REGISTERED_HERE, ("cisco_conferencing", "", "sip"), conductor="b2bua", m_lines=2)
    policy = call("C", REGISTERED_HERE, ("cisco_conferencing", "", "sip"), conductor="policy", m_lines=2)
    assert (b2bua.license, b2bua.units, b2bua.rules[0]) == (License.RMS, 2, "C8")
    assert (policy.license, policy.units) == (License.NONE, 0)
    assert "C8" in policy.rules


def test_c9_interworking_costs_rms_on_the_interworking_node():
    """C9: SIP<->H.323 interworking with an unregistered side costs 1 RMS where it interworks,
    even on C for a call that C3 would charge on E."""
    interworked_on_c = call("C", REGISTERED_HERE, ("traversal", "", "h323"), m_lines=2, interworked=True)
    assert (interworked_on_c.license, interworked_on_c.units, interworked_on_c.payer) == (License.RMS, 2, "C")
    assert "C9" in interworked_on_c.rules
    seen_from_e = call("E", ("traversal", "C", "sip"), ("external", "", "h323"), m_lines=2)
    assert seen_from_e.units == 2  # without interworking on C, E pays as C3 says


def test_c9_interworking_between_registered_endpoints_is_free():
    """C9: interworking costs nothing when both endpoints are registered to Cisco infrastructure."""
    charge = call("C", REGISTERED_HERE, ("local", "C", "h323"), m_lines=2, interworked=True)
    assert (charge.license, charge.units) == (License.NONE, 0)
    assert "C9" in charge.rules and "C1" in charge.rules


def test_c10_cloud_cmr_bypass_sip_free_h323_cmr_transformed_rms():
    """C10: no RMS to the cloud CMR without transformation (still a physical call); H.323 to the
    cloud takes a CMR license; a transformed dialled string gets no bypass."""
    sip = call("E", ("traversal", "C", "sip"), ("cloud_cmr", "", "sip"), m_lines=2)
    h323 = call("E", ("traversal", "C", "h323"), ("cloud_cmr", "", "h323"), m_lines=2)
    transformed = call("E", ("traversal", "C", "sip"), ("cloud_cmr", "", "sip"), m_lines=2, transformed=True)
    assert (sip.license, sip.units, sip.physical) == (License.NONE, 0, True)
    assert (h323.license, h323.units) == (License.CMR, 1)
    assert (transformed.license, transformed.units) == (License.RMS, 2)
    assert all("C10" in c.rules for c in (sip, h323, transformed))


def test_c11_calls_between_peers_are_registered_unless_one_side_is_not():
    """C11: between endpoints on different peers a call is registered (no RMS), with or without
    media through the peers; with an unregistered side it costs RMS."""
    plain = call("C", REGISTERED_HERE, ("local", "peer", "sip"), m_lines=2, cluster_peers=True)
    b2bua = call("C", REGISTERED_HERE, ("local", "peer", "sip"), m_lines=2, cluster_peers=True,
                 media_via_peers=True)
    unregistered = call("C", REGISTERED_HERE, ("third_party_sip", "", "sip"), m_lines=2, media_via_peers=True)
    assert plain.units == 0 and b2bua.units == 0
    assert "C11" in plain.rules and "C11" in b2bua.rules
    assert (unregistered.license, unregistered.units) == (License.RMS, 2)
    assert "C11" in unregistered.rules


# ---- robustness ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("role", "X", "role"),
    ("caller_zone", "moon", "unknown zone kind"),
    ("callee_registered", "somewhere", "callee_registered"),
    ("caller_protocol", "xmpp", "caller_protocol"),
    ("conductor", "proxy", "conductor"),
    ("m_lines", -1, "m_lines"),
])
def test_bad_facts_say_what_is_wrong(field, value, message):
    facts = CallFacts("C", *REGISTERED_HERE, *EXTERNAL_FROM_C)._replace(**{field: value})
    with pytest.raises(ValueError, match=message):
        classify_call(facts)


def test_classification_is_memoised_and_shared():
    """The hot path: the same facts return the very same immutable verdict."""
    facts = CallFacts("E", *REGISTERED_HERE, *EXTERNAL_ON_E, m_lines=1)
    assert classify_call(facts) is classify_call(CallFacts("E", *REGISTERED_HERE, *EXTERNAL_ON_E, m_lines=1))
