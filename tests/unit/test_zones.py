import pytest

from meter.zones import ZoneSettings, ZoneTable


def make_table():
    return ZoneTable([
        ZoneSettings(name="cucm", kind="unified_cm", peers=["10.0.0.5"], registered=True),
        ZoneSettings(name="webex", kind="cloud_cmr", match=["domain:webex.com"]),
        ZoneSettings(name="itsp", kind="third_party_sip", peers=["192.0.2.0/24"],
                     match=[r"regex:sip:\+?\d{6,}@.*"], target="192.0.2.10:5060"),
        ZoneSettings(name="internet", kind="external", match=[r"regex:.*"]),
    ])


def test_peer_address_exact_and_cidr():
    table = make_table()
    assert table.for_peer("10.0.0.5").name == "cucm"
    assert table.for_peer("192.0.2.77").name == "itsp"
    assert table.for_peer("198.51.100.1") is None
    assert table.for_peer("not-an-ip") is None


def test_uri_rules_in_file_order_first_match_wins():
    table = make_table()
    assert table.for_uri("sip:room@site.webex.com", "site.webex.com").name == "webex"
    assert table.for_uri("sip:room@WEBEX.COM", "WEBEX.COM").name == "webex"
    assert table.for_uri("sip:room@notwebex.com", "notwebex.com").name == "internet"
    assert table.for_uri("sip:+4930123456@gw.example", "gw.example").name == "itsp"


@pytest.mark.parametrize("kwargs, message", [
    ({"peers": ["10.0.0.300"]}, "not an address or CIDR"),
    ({"match": ["suffix:x"]}, "unknown rule kind"),
    ({"match": ["regex:("]}, "bad regex"),
    ({"target": "gw.example"}, "expected host:port"),
])
def test_bad_zone_settings_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ZoneSettings(name="z", kind="external", **kwargs)
