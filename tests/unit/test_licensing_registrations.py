"""Registration licensing, rules R1-R11, and the device catalog (devices.toml) string by string."""

import pytest

from meter import catalogs
from meter.licensing.devices import CatalogError, DeviceCatalog, parse_version
from meter.licensing.ledger import Ledger
from meter.licensing.model import Kind, License
from meter.licensing.registrations import RegistrationFacts, classify_registration

CATALOG = catalogs.device_catalog()


def sip(user_agent, role="C", path="direct", aliases=1):
    return classify_registration(RegistrationFacts(role, "sip", path, aliases, user_agent), CATALOG)


# Real User-Agent strings (sources in config/devices.toml), the model the catalog should name
# and the license a direct SIP registration takes (R2, R3).
REAL_STRINGS = [
    ("TANDBERG/528 (TC7.3.6.ea51021) Cisco-EX60", "EX60", License.DESKTOP),
    ("TANDBERG/528 (TC7.3.11.c1479a9) Cisco-EX60", "EX60", License.DESKTOP),
    ("TANDBERG/529 (ce8.3.0.c1a7707) Cisco-DX70", "DX70", License.DESKTOP),
    ("Cisco-CP-DX80/10.2.1", "DX80", License.ROOM),                 # Android firmware, not CE8.2+ (R3)
    ("Cisco-CP-DX70/10.2.1", "DX70", License.ROOM),
    ("TANDBERG/775 (MCX 4.8.12.18951) - Windows", "Jabber Video for TelePresence (Movi)", License.DESKTOP),
    ("TANDBERG/772 (MCX 4.3.12.13351) - Mac OS X", "Jabber Video for TelePresence (Movi)", License.DESKTOP),
    ("TANDBERG/528 (TC7.3.6.ea51021) Cisco-SX10", "SX series", License.ROOM),
    ("TANDBERG/529 (ce8.3.4.99243f7) Cisco-SX20", "SX series", License.ROOM),
    ("TANDBERG/529 (ce8.2.2.3263c59) Cisco-SX80", "SX series", License.ROOM),
    ("TANDBERG/529 (ce9.1.4.3ae3106) Cisco-MX700ST", "MX series", License.ROOM),
    ("TANDBERG/529 (ce11.40.1.1.10bdaa53ce2) Cisco-RoomKitMini", "Room Kit series", License.ROOM),
    ("TANDBERG/528 (TC7.3.5.a93bdb1)", "Cisco TC/CE endpoint (model not sent)", License.ROOM),
    ("TANDBERG/257 (TE4.1.1.273710)", "E20", License.ROOM),
    ("TANDBERG/81 (F9.1 PAL)", "MXP series", License.ROOM),
    ("TANDBERG/67 (F7.2 PAL)", "MXP series", License.ROOM),
    ("TANDBERG/80 (S7.10)", "TelePresence Content Server", License.ROOM),
    ("Cisco-CSF", "Jabber", License.ROOM),
    ("PolycomRealPresenceGroup310/6.2.2", "Polycom RealPresence Group", License.ROOM),
    ("PolycomRealPresenceGroup500/5.0.1", "Polycom RealPresence Group", License.ROOM),
    ("PolycomHDX8000HD/3.1.12", "Polycom HDX", License.ROOM),
    ("Polycom HDX 8000 HD (Release - 2.5.0.8_ne-4035)", "Polycom HDX", License.ROOM),
    ("PolycomRealPresenceTrio-Trio_8500-UA/5.9.2.7727", "Polycom RealPresence Trio", License.ROOM),
    ("PolycomVVX-VVX_450-UA/6.4.3.5018", "Polycom VVX", License.ROOM),
    ("PolycomSoundPointIP-SPIP_450-UA/4.0.15.1047", "Polycom SoundPoint IP", License.ROOM),
    ("LifeSize Icon 600/LS_RM3_3.7.0 (2421)", "Lifesize Icon", License.ROOM),
    ("Linphone/5.2.0 (belle-sip/5.2.0)", "Linphone", License.ROOM),
    ("LinphoneiOS/4.5.1 (iPhone de Kijou) LinphoneSDK/5.0.40-pre.2+ea19d3d", "Linphone", License.ROOM),
    ("Zoiper v2.10.20.4_1", "Zoiper", License.ROOM),
    ("Zoiper rev.5415", "Zoiper", License.ROOM),
    ("Z 5.5.5 v2.10.15.2", "Zoiper", License.ROOM),
    ("MicroSIP/3.21.3", "MicroSIP", License.ROOM),
]


@pytest.mark.parametrize("user_agent, model, license", REAL_STRINGS, ids=[s[0] for s in REAL_STRINGS])
def test_r2_each_real_user_agent_string(user_agent, model, license):
    """R2 (R3 for the DX/EX rows): the catalog names the model and the license class."""
    charge = sip(user_agent)
    assert (charge.model, charge.license, charge.units) == (model, license, 1)
    assert charge.rules[0] == "R1" and charge.rules[-1] == "R9"


def test_r2_every_other_sip_device_is_a_room_system():
    """R2: an unknown User-Agent (and an empty one) takes a room license."""
    for user_agent in ("SomeVendor VideoBar/1.0", ""):
        charge = sip(user_agent)
        assert (charge.license, charge.model) == (License.ROOM, "")
        assert "R2" in charge.rules


@pytest.mark.parametrize("user_agent, license", [
    ("TANDBERG/529 (ce8.2.0.abc1234) Cisco-DX80", License.DESKTOP),   # exactly CE8.2
    ("TANDBERG/529 (ce9.15.3.17) Cisco-DX80", License.DESKTOP),
    ("TANDBERG/529 (ce8.1.1.abc1234) Cisco-DX80", License.ROOM),      # older than CE8.2
    ("TANDBERG/528 (TC7.3.6.ea51021) Cisco-EX90", License.DESKTOP),   # exactly TC7.3.6
    ("TANDBERG/529 (ce9.1.4.3ae3106) Cisco-EX90", License.DESKTOP),   # CE is later than any TC
    ("TANDBERG/528 (TC7.3.5.a93bdb1) Cisco-EX90", License.ROOM),      # older than TC7.3.6
    ("TANDBERG/518 (TCNC6.2.0.20b1616) Cisco-EX60", License.ROOM),    # TCNC is a TC train
])
def test_r3_desktop_needs_dx_on_ce82_and_ex_on_tc736(user_agent, license):
    """R3: older DX and EX software registers, but takes a room license."""
    charge = sip(user_agent)
    assert charge.license is license and "R3" in charge.rules


def test_r3_versions_compare_within_and_across_trains():
    assert parse_version("TC7.3.6.ea51021") == ("TC", (7, 3, 6))
    assert parse_version("ce11.40.1.1.10bdaa53ce2") == ("CE", (11, 40, 1, 1))
    assert parse_version("TCNC6.2.0", {"TCNC": "TC"}) == ("TC", (6, 2, 0))
    assert parse_version("no version") is None


def test_r1_r4_every_h323_registration_takes_a_room_license():
    """R1, R4: H.323 registrations take a room license, even from a desktop model."""
    charge = classify_registration(RegistrationFacts("C", "h323", h323_product="Cisco TelePresence EX90"), CATALOG)
    assert (charge.license, charge.units, charge.kind) == (License.ROOM, 1, Kind.REGISTRATION)
    assert charge.model == "Cisco TelePresence endpoint"
    assert charge.rules == ("R1", "R4", "R9")


def test_r6_mra_registrations_take_no_license_here_but_a_slot():
    """R6 (and C1): an MRA registration is licensed on Unified CM; it still counts toward the caps."""
    charge = sip("TANDBERG/529 (ce9.15.3.17) Cisco-DX80", path="mra")
    assert (charge.license, charge.units, charge.kind) == (License.NONE, 0, Kind.MRA_REGISTRATION)
    assert "R6" in charge.rules


def test_r7_h323_registrations_cannot_be_proxied():
    """R7: proxied registration exists for SIP only."""
    with pytest.raises(ValueError, match="R7"):
        classify_registration(RegistrationFacts("C", "h323", "proxied_to_c"), CATALOG)


def test_r8_a_device_on_sip_and_h323_consumes_both_licenses():
    """R8: a DX80 registered over SIP (desktop) and over H.323 (room) takes one of each."""
    book = Ledger("c1", "C", catalogs.platform("large_vm"), now=0.0)
    book.set_licenses({License.DESKTOP: 1, License.ROOM: 1}, 0.0)
    over_sip = sip("TANDBERG/529 (ce9.15.3.17) Cisco-DX80")
    over_h323 = classify_registration(RegistrationFacts("C", "h323", h323_product="Cisco DX80"), CATALOG)
    assert book.charge_registration(("sip", "dx80@lab"), over_sip, 1.0).ok
    assert book.charge_registration(("h323", "dx80"), over_h323, 1.0).ok
    assert book.in_use(License.DESKTOP) == 1 and book.in_use(License.ROOM) == 1
    assert over_sip.license is License.DESKTOP and over_h323.license is License.ROOM


def test_r9_one_license_per_alias_not_per_device():
    """R9: an MCU registering three aliases takes three room licenses."""
    charge = sip("TANDBERG/80 (S7.10)", aliases=3)
    assert (charge.license, charge.units, charge.aliases) == (License.ROOM, 3, 3)
    book = Ledger("c1", "C", catalogs.platform("large_vm"), now=0.0)
    book.set_licenses({License.ROOM: 2}, 0.0)
    assert book.charge_registration("mcu", charge, 1.0).reason == "room_exhausted"


def test_r10_proxied_to_c_costs_as_direct_proxied_through_e_costs_nothing_on_e():
    """R10: C charges a registration proxied by E like a direct one; E charges nothing for it,
    though it still takes a registration slot there (R6)."""
    desk = "TANDBERG/528 (TC7.3.6.ea51021) Cisco-EX60"
    on_c = sip(desk, role="C", path="proxied_to_c")
    on_e = sip(desk, role="E", path="proxied_by_e")
    assert (on_c.license, on_c.units) == (License.DESKTOP, 1) and "R10" in on_c.rules
    assert (on_e.license, on_e.units, on_e.kind) == (License.NONE, 0, Kind.REGISTRATION)
    assert "R10" in on_e.rules


def test_bad_registration_facts_say_what_is_wrong():
    for facts, message in [
        (RegistrationFacts("X", "sip"), "role"),
        (RegistrationFacts("C", "xmpp"), "protocol"),
        (RegistrationFacts("C", "sip", "teleported"), "path"),
        (RegistrationFacts("C", "sip", aliases=0), "alias"),
    ]:
        with pytest.raises(ValueError, match=message):
            classify_registration(facts, CATALOG)


def test_a_lab_can_extend_the_catalog(tmp_path):
    """devices.toml is data: a lab's own file adds a model (here a desktop one)."""
    path = tmp_path / "devices.toml"
    path.write_text('[defaults]\ntrains = ["TC", "CE"]\n'
                    '[[sip]]\nmodel = "Lab Desk"\nmatch = "^LabDesk/"\nclass = "desktop"\n')
    lab = catalogs.device_catalog(path)
    charge = classify_registration(RegistrationFacts("C", "sip", user_agent="LabDesk/1.0"), lab)
    assert (charge.model, charge.license) == ("Lab Desk", License.DESKTOP)


@pytest.mark.parametrize("text, message", [
    ('[[sip]]\nmodel = "x"\nmatch = "("\n', "bad regex"),
    ('[[sip]]\nmodel = "x"\nmatch = "x"\nclass = "sofa"\n', "class"),
    ('[[sip]]\nmodel = "x"\nmatch = "x"\nclass = "desktop"\nmin_version = "XX1.0"\n', "min_version"),
    ('[[sip]]\nmodel = "x"\nmatch = "x"\ncolour = "red"\n', "unknown key 'colour'"),
    ('[speakers]\n', "unknown table"),
])
def test_a_bad_catalog_names_the_row_and_key(text, message):
    with pytest.raises(CatalogError, match=message):
        DeviceCatalog.parse(text, source="lab.toml")
