"""H.323 identifiers padded with NULs (issue 10 item 8): an OpenH323-based endpoint pads its
endpointIdentifier (H.225.0 EndpointIdentifier, a BMPString) to 100 characters with NULs in its ARQ.
The padded form names the same registration as the unpadded one, and so does a padded alias."""

from __future__ import annotations

from meter.codecs import ras
from meter.codecs.ras import Alias
from meter.h323.registrations import without_nul_padding
from tests.rasclient import RecordingHooks, inline_net, standalone_net

ALICE = [("h323-ID", "alice"), ("dialledDigits", "1000")]
BOB = [("h323-ID", "bob"), ("dialledDigits", "2000")]


def padded(text: str, width: int = 100) -> str:
    return text + "\0" * (width - len(text))


def test_the_codec_really_carries_the_nuls():
    """The padding survives the wire (else the tests below would prove nothing)."""
    data = ras.admission_request(1, endpoint_id=padded("ep1"), src_aliases=[Alias("h323-ID", "alice")],
                                 call_identifier=b"c" * 16, conference_id=b"f" * 16, bandwidth=3840,
                                 call_reference_value=1, dest_aliases=[Alias("h323-ID", "bob\0\0")])
    msg = ras.decode(data)
    assert msg.endpoint_identifier == padded("ep1") and msg.destination[0].value == "bob\0\0"
    clean = without_nul_padding(msg)
    assert clean.endpoint_identifier == "ep1" and clean.destination == (Alias("h323-ID", "bob"),)
    assert clean.aliases == msg.aliases and clean.call_identifier == msg.call_identifier


def test_without_nul_padding_leaves_a_clean_message_as_it_is():
    msg = ras.decode(ras.admission_request(1, endpoint_id="ep1", src_aliases=[Alias("h323-ID", "alice")],
                                           call_identifier=b"c" * 16, conference_id=b"f" * 16, bandwidth=3840,
                                           call_reference_value=1, dest_aliases=[Alias("h323-ID", "bob")]))
    assert without_nul_padding(msg) is msg


def test_standalone_arq_with_a_nul_padded_endpoint_identifier_is_admitted():
    """Before: ARJ callerNotRegistered. The padded ARQ is admitted and charged like the unpadded one."""
    hooks = RecordingHooks()
    net, gk = standalone_net(hooks)
    alice, bob = net.endpoint(5001, ALICE), net.endpoint(5002, BOB)
    assert net.register(alice).short == "RCF" and net.register(bob).short == "RCF"
    acf, call = net.admit(alice, [("h323-ID", "bob")], endpoint_id=padded(alice.endpoint_id))
    assert acf.short == "ACF" and acf.dest_call_signal_address == bob.call_signal_address
    assert hooks.admissions[-1].endpoint_id == alice.endpoint_id
    # the answering side pads too: same call, one charge
    ack, _ = net.admit(bob, [("h323-ID", "bob")], call_id=call.call_id, conference_id=call.conference_id,
                       answer=True, endpoint_id=padded(bob.endpoint_id))
    assert ack.short == "ACF" and len(gk.calls) == 1 and hooks.in_use == 1


def test_standalone_alias_padded_with_nuls_matches_its_unpadded_form():
    hooks = RecordingHooks()
    net, gk = standalone_net(hooks)
    alice = net.endpoint(5001, ALICE)
    bob = net.endpoint(5002, [("h323-ID", "bob\0\0\0\0")])
    assert net.register(alice).short == "RCF" and net.register(bob).short == "RCF"
    assert gk.registrations.owner(Alias("h323-ID", "bob")) is gk.registrations.get(bob.endpoint_id)
    acf, _ = net.admit(alice, [("h323-ID", "bob")])
    assert acf.short == "ACF" and acf.dest_call_signal_address == bob.call_signal_address
    acf, _ = net.admit(alice, [("h323-ID", "bob\0\0")])
    assert acf.short == "ACF"


def test_inline_arq_with_a_nul_padded_endpoint_identifier_is_metered_against_its_registration():
    hooks, upstream_hooks = RecordingHooks(), RecordingHooks()
    net, node, upstream = inline_net(hooks, upstream_hooks)
    alice, bob = net.endpoint(5001, ALICE), net.endpoint(5002, BOB)
    assert net.register(alice).short == "RCF" and net.register(bob).short == "RCF"
    acf, _ = net.admit(alice, [("h323-ID", "bob")], endpoint_id=padded(alice.endpoint_id))
    assert acf.short == "ACF"
    info = hooks.admissions[-1]
    assert info.endpoint_id == alice.endpoint_id and info.caller.registered == "h323"
    (only,) = list(node.calls)
    assert [e for e, _ in only.legs] == [alice.endpoint_id]
