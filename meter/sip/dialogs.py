"""Calls and their dialogs (RFC 3261 §12), as the node sees them pass. Sans-I/O.

A *call* is what one initial INVITE starts, keyed by Call-ID and the caller's From tag; its
*dialogs* (early, then confirmed) are keyed by the callee's To tag, so several forked early
dialogs can exist. A request from either side finds its call with the Call-ID and either tag.

The table is what makes "every allowed call ends exactly once" hold: :meth:`DialogTable.end`
removes the call and answers True only the first time. A call the node gave up on before any
answer (a timeout, an unanswered CANCEL) is kept a while longer as a *tombstone*, so that a 2xx
arriving after all can re-open it instead of setting up a call nobody meters.

A call also keeps what the node needs to end it itself with a BYE to each side (RFC 3261 §12:
the route set, both remote targets and tags, the highest CSeq each side used).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meter.sip.peer import Peer
from meter.sip.hooks import CallInfo
from meter.sip.session_timer import NO_OFFER, NO_SESSION, Offer, Session

# Call states, in the order a call moves through them.
TRYING = "trying"  # INVITE forwarded, no dialog yet
EARLY = "early"  # a provisional with a To tag came back (RFC 3261 §12.1)
ANSWERED = "answered"  # 2xx forwarded, ACK not yet seen
CONFIRMED = "confirmed"  # ACK for the 2xx seen (RFC 3261 §13.2.2.4)

# Dialog states (RFC 3261 §12): early, confirmed; a terminated dialog leaves the table.
DIALOG_EARLY = "early"
DIALOG_CONFIRMED = "confirmed"
DIALOG_TERMINATED = "terminated"


@dataclass(slots=True)
class Dialog:
    to_tag: str
    state: str
    created: float


@dataclass(slots=True)
class Call:
    call_id: str
    from_tag: str
    from_aor: str
    to_aor: str
    request_uri: str
    source: Peer
    created: float
    """Monotonic time of the initial INVITE (the reaper's clock)."""
    started: float
    """Wall-clock time of the initial INVITE (what the API shows)."""
    offer_sdp: bytes = b""
    answer_sdp: bytes = b""
    state: str = TRYING
    dialogs: dict[str, Dialog] = field(default_factory=dict)
    info: CallInfo | None = None
    """The CallInfo the hooks allowed, to ask again if a late 2xx re-opens the call."""
    invite_cseq: int = 0
    offer: Offer = NO_OFFER
    """What the node forwarded of RFC 4028 in the initial INVITE (for §8.2 on a late 2xx)."""
    # -- the confirmed dialog, as the node needs it to send a BYE each way (RFC 3261 §12.1) --
    caller_from: str = ""
    """The INVITE's From value (caller's URI and tag)."""
    caller_target: str = ""
    """The caller's remote target: Contact of the INVITE, or of its last target refresh."""
    callee_to: str = ""
    """The 2xx's To value (callee's URI and tag)."""
    callee_target: str = ""
    """The callee's remote target: Contact of the 2xx, or of its last target refresh."""
    callee_peer: Peer | None = None
    """Where the 2xx came from: a TCP callee is reached back through that connection."""
    route_set: tuple[str, ...] = ()
    """Record-Route of the 2xx, top first (the callee's route set, RFC 3261 §12.1.1)."""
    caller_cseq: int = 0
    callee_cseq: int = 0
    """Highest CSeq seen from each side; a BYE the node sends goes one beyond (RFC 3261 §12.2.1.1)."""
    # -- RFC 4028 session timer --
    session: Session = NO_SESSION
    session_expires_at: float = 0.0
    """Monotonic deadline of the current session interval; 0 = no session timer."""
    session_timer: object = None
    ack_timer: object = None
    ends: tuple = ()
    """(caller_target, callee_target, callee_peer, addresses of both ends): the relay policy's, cached."""
    """RFC 3261 §13.3.1.4: armed at the first 2xx, cancelled by its ACK; firing ends the call."""
    gave_up: bool = False
    """The node answered the caller for a branch that never gave a final answer (timeout, CANCEL guard)."""
    refused: bool = False
    """A late 2xx re-asked the hooks and was refused: later copies are only forwarded."""

    @property
    def key(self) -> tuple[str, str]:
        return self.call_id, self.from_tag


class DialogTable:
    def __init__(self) -> None:
        # Insertion order is creation order: the reaper walks from the oldest and stops early.
        self._calls: dict[tuple[str, str], Call] = {}
        # Tombstones, in burial order (one linger for all, so the oldest expire first): call, until.
        self._buried: dict[tuple[str, str], tuple[Call, float]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self):
        return iter(list(self._calls.values()))

    def add(self, call: Call) -> None:
        self._calls[call.key] = call
        self._buried.pop(call.key, None)  # a new call with the same Call-ID and tag (RFC 4028 §7.4 retry)

    def live(self, call: Call) -> bool:
        return self._calls.get(call.key) is call

    def find(self, call_id: str, tag: str | None, other_tag: str | None = None) -> Call | None:
        """The call of a message: the caller's tag is From (caller -> callee) or To (callee -> caller)."""
        calls = self._calls
        if tag is not None:
            call = calls.get((call_id, tag))
            if call is not None:
                return call
        if other_tag is not None:
            return calls.get((call_id, other_tag))
        return None

    def provisional(self, call: Call, to_tag: str | None, now: float) -> None:
        """A 1xx with a To tag creates an early dialog (RFC 3261 §12.1)."""
        if to_tag is None or to_tag in call.dialogs:
            return
        call.dialogs[to_tag] = Dialog(to_tag, DIALOG_EARLY, now)
        if call.state == TRYING:
            call.state = EARLY

    def answered(self, call: Call, to_tag: str | None, answer_sdp: bytes, now: float) -> bool:
        """A 2xx confirms its dialog; True the first time the call is answered."""
        tag = to_tag or ""
        dialog = call.dialogs.get(tag)
        if dialog is None:
            call.dialogs[tag] = Dialog(tag, DIALOG_CONFIRMED, now)
        else:
            dialog.state = DIALOG_CONFIRMED
        if call.state in (TRYING, EARLY):
            call.state = ANSWERED
            call.answer_sdp = answer_sdp
            # RFC 3261 §13.2.2.4: other early dialogs of the call stay until their own answer;
            # a proxy does not know the caller's choice, so they are dropped with the call.
            return True
        return False

    def confirmed(self, call: Call) -> bool:
        """The ACK of the 2xx passed; True the first time."""
        if call.state == ANSWERED:
            call.state = CONFIRMED
            return True
        return False

    def end(self, call: Call) -> bool:
        """Remove the call and its dialogs; True only for the first end of a live call."""
        if self._calls.get(call.key) is call:
            del self._calls[call.key]
            for dialog in call.dialogs.values():
                dialog.state = DIALOG_TERMINATED
            return True
        return False

    def saw_cseq(self, call: Call, from_tag: str | None, number: int) -> None:
        """An in-dialog request passed: note its CSeq on the side that sent it."""
        if from_tag == call.from_tag:
            call.caller_cseq = max(call.caller_cseq, number)
        else:
            call.callee_cseq = max(call.callee_cseq, number)

    # -- tombstones: calls the node ended unanswered, that a late 2xx may re-open ---------------------

    def bury(self, call: Call, until: float) -> None:
        self._buried.pop(call.key, None)
        self._buried[call.key] = (call, until)

    def buried(self, call_id: str, tag: str | None) -> Call | None:
        entry = self._buried.get((call_id, tag or ""))
        return entry[0] if entry is not None else None

    def reopen(self, call: Call, now: float) -> None:
        """A late 2xx re-opens a buried call: a new life in the table, created now (for the reaper)."""
        self._buried.pop(call.key, None)
        call.state = TRYING
        call.dialogs = {}
        call.created = now
        call.gave_up = False
        self._calls[call.key] = call

    def prune(self, now: float) -> int:
        """Forget tombstones whose time is up; they expire in burial order."""
        expired = []
        for key, (_, until) in self._buried.items():
            if until > now:
                break
            expired.append(key)
        for key in expired:
            del self._buried[key]
        return len(expired)

    @property
    def tombstones(self) -> int:
        return len(self._buried)

    def reap(self, now: float, max_age: float) -> list[Call]:
        """Remove and return calls created more than ``max_age`` seconds ago."""
        old = []
        limit = now - max_age
        for call in self._calls.values():
            if call.created > limit:
                break  # insertion order is creation order
            old.append(call)
        for call in old:
            self.end(call)
        return old

    # -- restart (meter.store.state) ---------------------------------------------------------------

    def with_call_ids(self, call_ids: set[str]) -> list[Call]:
        """The live calls with these Call-IDs (one pass: the state journal's batch, not the hot path)."""
        return [call for call in self._calls.values() if call.call_id in call_ids]

    def restore(self, call: Call) -> None:
        """A call written before a restart: in-dialog requests (a BYE) find it again."""
        self._calls[call.key] = call

    def clear(self) -> list[Call]:
        self._buried.clear()
        calls = list(self._calls.values())
        for call in calls:
            self.end(call)
        return calls
