"""The one table of refusal reasons: every reason the ledger can give, its rule, its answers, one wording."""

from meter import catalogs
from meter.licensing.calls import CallFacts, classify_call
from meter.licensing.ledger import Ledger
from meter.licensing.model import POOLED
from meter.licensing.refusals import REFUSALS
from meter.licensing.rules import RULES

VIDEO = classify_call(CallFacts("E", "local", "E", "sip", "external", "", "sip", m_lines=2))
REGISTERED = classify_call(CallFacts("E", "local", "E", "sip", "local", "E", "sip", m_lines=2))


def test_every_reason_has_a_known_rule_a_503_and_words():
    """P1, P3, R6, R11, C10: each refusal names the rule that refused it."""
    assert {f"{license}_exhausted" for license in POOLED} <= set(REFUSALS)
    for reason, refusal in REFUSALS.items():
        assert refusal.reason == reason and refusal.rule in RULES and refusal.text
        assert refusal.sip_status == 503 and refusal.h323_reason == "resourceUnavailable"


def test_the_wire_forms_derive_from_the_one_wording():
    """R11: '503 Service Unavailable - <text>' and a Warning with the reason key and the rules."""
    room = REFUSALS["room_exhausted"]
    assert room.sip_phrase == "Service Unavailable - No Room System license available"
    assert room.warning(("R1", "R11")) == "No Room System license available (room_exhausted; rules R1,R11)"


def test_a_refused_decision_carries_its_row_of_the_table():
    """P1: the decision's reason, rules and words all come from the table."""
    book = Ledger("n1", "E", catalogs.platform("large_vm"), now=0.0)
    decision = book.charge_call("c", VIDEO, 1.0)
    assert decision.refusal is REFUSALS["rms_exhausted"] and decision.rules[-1] == "P1"
    assert decision.text == "No Rich Media Session license available"
    fitted = book.charge_call("registered", REGISTERED, 1.0)
    assert fitted.ok and fitted.refusal is None and fitted.text == ""
