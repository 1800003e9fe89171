"""Why a charge did not fit: the one table of refusal reasons, and every form a refusal takes.

A reason key (``rms_exhausted``, ...) is what the ledger decides (``Decision.reason``), the
``reason`` label of ``meter_refusals_total`` (a small fixed set) and what logs and the API show.
Each reason has the rule that refuses, the answers it gets on the wire and one wording, from
which every text is derived:

- SIP reason phrase  ``Service Unavailable - <text>``             (``Refusal.sip_phrase``)
- SIP Warning text   ``<text> (<reason>; rules C2,P1)``           (``Refusal.warning(rules)``;
                     the SIP node wraps it as ``Warning: 399 <host:port> "..."``, RFC 3261 §20.43)
- H.323              RRJ/ARJ ``resourceUnavailable`` with the same Warning text as its detail
- API and logs       ``<text>``, the key as the metric label
"""

from __future__ import annotations

from dataclasses import dataclass

# 503: a capacity limit, try again later or elsewhere (RFC 3261 §21.5.4).
SIP_STATUS = 503
SIP_STATUS_PHRASE = "Service Unavailable"
# H.225.0 RegistrationRejectReason and AdmissionRejectReason both have this choice.
H323_REASON = "resourceUnavailable"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str                    # the key: Decision.reason and the metric label
    rule: str                      # the rule that refuses, appended to the charge's rules
    text: str                      # the one wording, for the wire, the API and the logs
    sip_status: int = SIP_STATUS
    h323_reason: str = H323_REASON

    @property
    def sip_phrase(self) -> str:
        """The SIP reason phrase: '503 Service Unavailable - No Room System license available'."""
        return f"{SIP_STATUS_PHRASE} - {self.text}"

    def warning(self, rules: tuple[str, ...]) -> str:
        """The SIP Warning text and the H.323 detail: the words, the key and the decision's rules."""
        return f'{self.text} ({self.reason}; rules {",".join(rules)})'


REFUSALS: dict[str, Refusal] = {r.reason: r for r in (
    Refusal("rms_exhausted", "P1", "No Rich Media Session license available"),  # the cluster's RMS pool (C2, C4)
    Refusal("room_exhausted", "R11", "No Room System license available"),       # R5: not interchangeable
    Refusal("desktop_exhausted", "R11", "No Desktop System license available"),
    Refusal("cmr_exhausted", "C10", "No CMR license available"),
    Refusal("peer_rms_limit", "P3", "Node at its RMS limit"),  # this peer uses its platform's maximum RMS
    Refusal("node_call_capacity", "P3", "Node at its physical call capacity"),
    Refusal("node_registration_capacity", "R6", "Node at its registration capacity"),
    Refusal("node_mra_registration_capacity", "R6", "Node at its MRA registration capacity"),
    # e.g. Smart evaluation expired unregistered (S2)
    Refusal("registrations_blocked", "R11", "Registrations refused by licensing"),
)}
