"""Registration and call tables: O(1) indexes stay consistent through updates, expiry uses a lazy heap."""

from __future__ import annotations

from meter.codecs.ras import Alias, TransportAddress
from meter.h323.calls import CallTable, Leg, RasCall, call_key
from meter.h323.hooks import Party
from meter.h323.registrations import Registration, RegistrationTable, alias_key, encodable, unique_aliases

A = TransportAddress("127.0.0.1", 1720)
B = TransportAddress("127.0.0.1", 1721)


def reg(endpoint_id, aliases, address=A, now=0.0):
    return Registration(endpoint_id, tuple(Alias(*a) for a in aliases), address, (address,), None, "terminal", address,
                        registered_at=now)


def test_alias_keys_share_e164_and_ignore_case_of_text_aliases():
    assert alias_key(Alias("dialledDigits", "1000")) == alias_key(Alias("partyNumber", "1000"))
    assert alias_key(Alias("h323-ID", "Alice")) == alias_key(Alias("h323-ID", "alice"))
    assert alias_key(Alias("h323-ID", "1000")) != alias_key(Alias("dialledDigits", "1000"))
    assert unique_aliases([Alias("h323-ID", "a"), Alias("h323-ID", "A"), Alias("url-ID", "a")]) == (
        Alias("h323-ID", "a"), Alias("url-ID", "a"))
    assert encodable([Alias("mobileUIM", "1"), Alias("h323-ID", "x")]) == (Alias("h323-ID", "x"),)


def test_indexes_follow_add_update_partial_removal_and_removal():
    table = RegistrationTable()
    r = reg("e1", [("h323-ID", "a"), ("dialledDigits", "1")])
    table.add(r)
    assert table.owner(Alias("h323-ID", "A")) is r and table.at_address([B, A]) is r
    assert table.conflicts([Alias("h323-ID", "a"), Alias("h323-ID", "z")], "e2") == (Alias("h323-ID", "a"),)
    assert table.conflicts([Alias("h323-ID", "a")], "e1") == ()
    dropped = table.update(r, aliases=(Alias("h323-ID", "a"), Alias("h323-ID", "b")), call_signal_addresses=(B,))
    assert dropped == (Alias("dialledDigits", "1"),)
    assert table.owner(Alias("dialledDigits", "1")) is None and table.owner(Alias("h323-ID", "b")) is r
    assert table.at_address([A]) is None and table.at_address([B]) is r
    assert table.remove_aliases(r, [Alias("h323-ID", "B"), Alias("h323-ID", "nope")]) == (Alias("h323-ID", "b"),)
    assert r.keys == {("h323-ID", "a")} and set(table.by_alias) == {("h323-ID", "a")}
    assert table.remove("e1") is r and not table.by_alias and not table.by_address and len(table) == 0


def test_removing_an_endpoint_keeps_an_alias_another_now_holds():
    # Inline: the upstream may hand an alias to a second endpoint; the first one's removal must not unindex it.
    table = RegistrationTable()
    first, second = reg("e1", [("h323-ID", "a")], A), reg("e2", [("h323-ID", "a")], B)
    table.add(first)
    table.add(second)
    table.remove("e1")
    assert table.owner(Alias("h323-ID", "a")) is second


def test_expiry_heap_skips_refreshed_and_removed_registrations():
    table = RegistrationTable()
    r1, r2, r3 = reg("e1", [("h323-ID", "a")], A), reg("e2", [("h323-ID", "b")], B), reg("e3", [], TransportAddress("127.0.0.1", 9))
    for r in (r1, r2, r3):
        table.add(r)
        table.refresh(r, 60, now=0.0)
    table.refresh(r1, 60, now=50.0)  # keep-alive: the old heap entry is stale
    table.remove("e3")
    assert table.expired(59.9) == []
    assert table.expired(60.0) == [r2]
    table.remove("e2")
    assert table.expired(100.0) == [] and table.expired(110.0) == [r1]
    table.refresh(r1, None, now=120.0)  # no time-to-live: never expires
    assert table.expired(1e9) == []


def test_call_key_prefers_the_call_identifier_then_the_conference_id():
    guid, conf = bytes(range(16)), bytes(range(1, 17))
    assert call_key(guid, conf) == guid
    assert call_key(bytes(16), conf) == conf
    assert call_key(None, bytes(16)) is None


def test_call_table_indexes_legs_by_endpoint():
    calls = CallTable()
    key = bytes(range(16))
    call = RasCall(key, key, key, 0.0, 0.0, Party(()), Party(()), "h323", 100)
    calls.add(call)
    calls.add_leg(call, Leg("e1", False, 1, 100, A, 0.0, 0.0))
    calls.add_leg(call, Leg("e2", True, 1, 100, B, 0.0, 0.0))
    assert calls.of_endpoint("e2") == [call] and call.call_key == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert calls.remove(key) is call and calls.by_endpoint == {} and calls.remove(key) is None
