"""Option keys (PAK mode): format, verification with distinct reasons, K1-K6."""

import base64
import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meter.licensing.keys import PREFIX, KeyRefused, decode_key, issue_key, verify_key
from meter.licensing.keytable import APPLIED_LIMIT, OptionKeyTable
from meter.licensing.model import License
from meter.licensing.options import OPTIONS
from meter.licensing.pool import MemoryPool
from meter.store.node_licensing import NodeLicensing

ISSUER = Ed25519PrivateKey.generate()
PUBLIC = ISSUER.public_key()
SERIAL = "MTRTEST01"
NOW = 1_700_000_000.0


def key(option="RMS", quantity=100, expires=None, serial=SERIAL, issuer=ISSUER, issued_at=NOW):
    return issue_key(issuer, serial=serial, option=option, quantity=quantity, expires=expires, issued_at=issued_at)


def refusal(text, now=NOW, **kwargs):
    with pytest.raises(KeyRefused) as caught:
        verify_key(PUBLIC, SERIAL, text, now, **kwargs)
    return caught.value.reason


def _blob(text):
    body = text[len(PREFIX):]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _pack(blob):
    return PREFIX + base64.urlsafe_b64encode(blob).decode().rstrip("=")


# ---- the format and the refusal reasons ------------------------------------------------------

def test_k1_a_key_grants_a_quantity_for_ever_or_a_feature_for_a_period():
    """K1: quantity or feature, with or without an end."""
    rms = verify_key(PUBLIC, SERIAL, key("RMS", 100), NOW)
    assert (rms.option, rms.quantity, rms.expires, rms.demo) == ("RMS", 100, None, False)
    hsm = verify_key(PUBLIC, SERIAL, key("HSM", 1, expires=NOW + 86400), NOW)
    assert (hsm.option, hsm.expires, hsm.demo) == ("HSM", NOW + 86400, True)
    assert rms.serial == SERIAL and rms.issued_at == NOW and len(rms.key_id) == 16


def test_forged_other_serial_and_expired_keys_are_refused_with_distinct_reasons():
    """The issue's acceptance check: a forged key, a key for another serial and an expired key
    are each refused, each with its own reason (and altered, unknown option and Smart too)."""
    other_issuer = Ed25519PrivateKey.generate()
    genuine = _blob(key())
    payload = genuine[:-68]
    forged_signature = payload + os.urandom(64)
    self_consistent_forgery = forged_signature + hashlib.sha256(forged_signature).digest()[:4]
    altered = _pack(genuine.replace(b"|100|", b"|900|"))  # quantity edited after issue
    reasons = {
        "forged by another issuer": refusal(key(issuer=other_issuer)),
        "forged signature": refusal(_pack(self_consistent_forgery)),
        "other serial": refusal(key(serial="MTROTHER99")),
        "expired": refusal(key(expires=NOW - 1, issued_at=NOW - 100)),
        "altered": refusal(altered),
        "unknown option": refusal(key(option="TURN_RELAYS")),
        "smart mode": refusal(key(), smart_mode=True),
        "not a key": refusal("116341Y00-1-C8A6F9B2"),
    }
    assert reasons == {
        "forged by another issuer": "forged",
        "forged signature": "forged",
        "other serial": "other_serial",
        "expired": "expired",
        "altered": "altered",
        "unknown option": "unknown_option",
        "smart mode": "smart_mode",
        "not a key": "malformed",
    }


def test_a_mistyped_character_is_reported_as_altered():
    text = key()
    middle = len(text) // 2
    typo = text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1:]
    assert refusal(typo) == "altered"


def test_an_expired_key_is_still_decodable_for_listing():
    """K5: an expired key is refused when added, but its fields can still be shown."""
    text = key(expires=NOW - 1, issued_at=NOW - 100)
    decoded, _, _ = decode_key(text)
    assert decoded.expired(NOW) and decoded.option == "RMS"


@pytest.mark.parametrize("code", sorted(OPTIONS))
def test_k2_every_option_type_in_force_or_legacy_is_recognised(code):
    """K2: RMS, desktop, room, HSM, Advanced Account Security, Microsoft Interoperability, and the
    legacy Expressway Series, Traversal Server, Encryption, H.323-to-SIP interworking."""
    assert verify_key(PUBLIC, SERIAL, key(code, 1), NOW).option == code


def test_k2_the_spec_types_are_all_there():
    titles = {o.title for o in OPTIONS.values()}
    assert {"Rich Media Sessions", "TelePresence Desktop Systems", "TelePresence Room Systems", "HSM",
            "Advanced Account Security", "Microsoft Interoperability", "Expressway Series",
            "Traversal Server", "Encryption", "H.323-to-SIP Interworking Gateway"} <= titles
    assert {code for code, o in OPTIONS.items() if o.legacy} == {
        "EXPRESSWAY_SERIES", "TRAVERSAL_SERVER", "ENCRYPTION", "H323_SIP_INTERWORKING"}


def test_issuing_refuses_bad_fields():
    for kwargs, message in [({"serial": "bad serial"}, "serial"), ({"option": "rms!"}, "option"),
                            ({"quantity": 0}, "quantity")]:
        with pytest.raises(ValueError, match=message):
            issue_key(ISSUER, **{"serial": SERIAL, "option": "RMS", "quantity": 1, "issued_at": NOW, **kwargs})


# ---- the installed-key table -----------------------------------------------------------------

def table():
    return OptionKeyTable(PUBLIC, SERIAL)


def test_k3_restart_required_keys_wait_for_a_restart_with_an_alarm(tmp_path):
    """K3: Traversal Server, Expressway Series and Advanced Account Security apply only after a
    restart; until then 'restart required' stands and the node keeps working."""
    node = NodeLicensing.open(tmp_path)
    rms = issue_key_for(node, "RMS", 10)
    node.add_key(rms, NOW)
    result = node.add_key(issue_key_for(node, "TRAVERSAL_SERVER", 1), NOW)
    assert result.pending_restart and any("K3" in w for w in result.warnings)
    assert "TRAVERSAL_SERVER" not in node.grants(NOW).features
    assert node.grants(NOW).quantities == {License.RMS: 10}  # still working
    alarm = node.alarms.active()[0]
    assert (alarm.id, alarm.rule) == ("restart-required", "K3")
    node.close()

    restarted = NodeLicensing.open(tmp_path)  # the alarm survives until the node has restarted
    assert restarted.alarms.is_active("restart-required")
    assert restarted.node_started(NOW + 60) == [result.index]
    assert "TRAVERSAL_SERVER" in restarted.grants(NOW + 60).features
    assert not restarted.alarms.is_active("restart-required")
    assert {o.code for o in OPTIONS.values() if o.restart} == {
        "TRAVERSAL_SERVER", "EXPRESSWAY_SERIES", "ADVANCED_ACCOUNT_SECURITY"}
    restarted.close()


def issue_key_for(node, option, quantity=1, expires=None):
    from meter.store.licensing import load_issuer

    return issue_key(load_issuer(node.store.issuer_key_path), serial=node.serial, option=option,
                     quantity=quantity, expires=expires, issued_at=NOW)


def test_k4_only_the_first_65_keys_apply_the_66th_is_listed_but_inert():
    """K4 (CSCvf78728): 66 RMS keys of 1 each grant 65; the 66th shows as added but does nothing."""
    keys = table()
    results = [keys.add(key("RMS", 1), NOW) for _ in range(APPLIED_LIMIT + 1)]
    assert [r.index for r in results] == list(range(1, 67))
    assert any("K4" in w for w in results[-1].warnings)
    assert not any("K4" in w for w in results[-2].warnings)
    assert keys.grants(NOW).quantities == {License.RMS: 65}
    states = {s.index: s.state for s in keys.statuses(NOW)}
    assert states[65] == "active" and states[66] == "inert"
    keys.remove(3)  # now the old 66th is among the first 65
    assert keys.grants(NOW).quantities == {License.RMS: 65}
    assert keys.add(key("RMS", 1), NOW).index == 3  # lowest free index


def test_k4_xconfiguration_index_is_1_to_64_and_writing_an_index_in_use_overwrites_it():
    """K4: xConfiguration Option [1..64] Key; an index in use is overwritten and its feature lost."""
    keys = table()
    keys.add(key("HSM", 1), NOW, index=5)
    assert "HSM" in keys.grants(NOW).features
    result = keys.add(key("MICROSOFT_INTEROP", 1), NOW, index=5)
    assert any("overwrote option 5" in w for w in result.warnings)
    assert keys.grants(NOW).features == frozenset({"MICROSOFT_INTEROP"})
    for bad in (0, 65):
        with pytest.raises(ValueError, match="1..64"):
            keys.add(key("HSM", 1), NOW, index=bad)


def test_k4_the_same_key_twice_is_a_duplicate():
    keys = table()
    text = key()
    keys.add(text, NOW)
    with pytest.raises(KeyRefused) as caught:
        keys.add(text, NOW)
    assert caught.value.reason == "duplicate"


def test_k5_a_demo_keys_quantity_stops_at_expiry():
    """K5: a time-limited key's grant stops when it expires; the key stays listed as expired."""
    keys = table()
    keys.add(key("RMS", 100), NOW)
    keys.add(key("RMS", 20, expires=NOW + 3600), NOW)
    assert keys.grants(NOW).quantities == {License.RMS: 120}
    assert keys.next_change(NOW) == NOW + 3600
    assert keys.grants(NOW + 3600).quantities == {License.RMS: 100}
    assert [s.state for s in keys.statuses(NOW + 3600)] == ["active", "expired"]
    assert keys.next_change(NOW + 3600) is None


def test_k5_a_permanent_key_beside_a_demo_key_warns_and_the_feature_stops_at_demo_expiry():
    """K5: adding a permanent key while a demo key for the option is installed warns; if the demo
    key is not removed, the feature stops when it expires."""
    keys = table()
    keys.add(key("HSM", 1, expires=NOW + 60), NOW)
    result = keys.add(key("HSM", 1), NOW)
    assert any("K5" in w and "remove it" in w for w in result.warnings)
    assert "HSM" in keys.grants(NOW).features
    assert "HSM" not in keys.grants(NOW + 60).features
    assert [s.state for s in keys.statuses(NOW + 60)] == ["expired", "masked"]
    keys.remove(1)  # the demo key removed: the permanent key applies
    assert "HSM" in keys.grants(NOW + 60).features


def test_k6_the_option_key_view_shows_keys_features_and_every_peers_licenses(tmp_path):
    """K6: every installed key with its validity, the features in force and the current licenses
    of every cluster peer."""
    node = NodeLicensing.open(tmp_path)
    node.add_key(issue_key_for(node, "RMS", 300), NOW)
    node.add_key(issue_key_for(node, "HSM", 1, expires=NOW + 10), NOW)
    pool = MemoryPool()
    pool.join("peer-a", NOW)
    pool.join("peer-b", NOW)
    pool.contribute("peer-a", {"rms": 300}, NOW)
    pool.contribute("peer-b", {"rms": 200, "room": 5}, NOW)
    view = node.view(NOW + 20, peers=pool.peers(NOW + 20))
    assert [(k["index"], k["option"], k["state"]) for k in view["keys"]] == [(1, "RMS", "active"), (2, "HSM", "expired")]
    assert view["quantities"] == {"rms": 300} and view["features"] == []
    assert view["peers"] == [
        {"name": "peer-a", "alive": True, "licenses": {"rms": 300}, "licenses_until": None},
        {"name": "peer-b", "alive": True, "licenses": {"rms": 200, "room": 5}, "licenses_until": None},
    ]
    node.close()


def test_keys_survive_a_restart_and_are_verified_again(tmp_path):
    node = NodeLicensing.open(tmp_path)
    node.add_key(issue_key_for(node, "ROOM", 25), NOW)
    serial = node.serial
    node.close()
    again = NodeLicensing.open(tmp_path)
    assert again.serial == serial
    assert again.grants(NOW).quantities == {License.ROOM: 25}
    again.close()


def _lenient(text: str) -> bytes:
    """What Python's default (non-validating) base64 decoding makes of a key's body."""
    body = text[len(PREFIX):].replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(body + "==")


def _non_canonical_spellings(text: str) -> list[str]:
    """The same bytes spelt differently: what a lenient base64 decoder would take for the key."""
    body = text[len(PREFIX):]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spellings = [
        PREFIX + body + "=" * (-len(body) % 4 or 4),     # padding
        PREFIX + body[:10] + "!" + body[10:],             # a character outside the alphabet, skipped
        PREFIX + body[:10] + "\n" + body[10:],            # a line break inside
        PREFIX + body.replace("-", "+").replace("_", "/") if ("-" in body or "_" in body) else None,
    ]
    unused_bits = {2: 4, 3: 2}.get(len(body) % 4, 0)  # low bits of the last character that carry nothing
    if unused_bits:
        last = alphabet.index(body[-1])
        spellings.append(PREFIX + body[:-1] + alphabet[last ^ 1])
    return [s for s in spellings if s is not None]


def test_k4_a_non_canonical_encoding_of_a_valid_key_is_refused_as_altered():
    """K4 strict decoding: padding, stray characters, the other base64 alphabet or non-zero unused
    bits decode to the very bytes of a valid key, and each is refused as altered, not installed."""
    for option, quantity in (("RMS", 100), ("ROOM", 7), ("HSM", 1)):
        text = key(option, quantity)
        assert verify_key(PUBLIC, SERIAL, text, NOW).text == text
        spellings = _non_canonical_spellings(text)
        assert len(spellings) >= 3
        for spelt in spellings:
            assert _lenient(spelt) == _blob(text), "a spelling of the very same key"
            assert refusal(spelt) == "altered", spelt
    # pasted with surrounding blanks is still the key itself
    text = key()
    assert verify_key(PUBLIC, SERIAL, f"  {text}\n", NOW).key_id == decode_key(text)[0].key_id
