"""Smart Licensing's life cycle (S1-S14, P6), as a pure state machine: time is an argument.

The machine holds what the node knows of its evaluation, its registration with the Smart Software
Manager and its last authorization. It never talks to the manager: ``next_action(now)`` says what
the agent (``meter.smart.agent``) should do next and when, and the agent hands back each result
(``registered``, ``authorized``, ``usage_reported``, ``failed``...). ``effects(now)`` says what the
ledger must do with it (capacity per pooled license, registrations blocked or not) and which
alarms stand. Every timer is a setting (``SmartTimers``) so a test can walk a year in seconds.

State is a plain dict of JSON values (``to_dict``/``from_dict``): ``meter.store.smart_state`` keeps
it in the state directory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

DAY = 86400.0

# Contract C: one license tag per pooled license (docs/licensing-rules.md, "Smart license tags").
TAGS = {"rms": "EXPWY_RMS", "room": "EXPWY_ROOM", "desktop": "EXPWY_DESKTOP", "cmr": "EXPWY_CMR"}
LICENSE_FOR_TAG = {tag: lic for lic, tag in TAGS.items()}

# While nothing limits a pooled license by count (evaluation, S2's "keeps existing ones and
# calls", out of compliance), the ledger still needs a number: one no lab reaches. The platform's
# physical capacity (P3) limits calls regardless.
UNLIMITED = 1_000_000

# Registration states (S5), as the Maintenance > Smart licensing page shows them.
REGISTERED = "Registered"
UNREGISTERED = "Unregistered"
REG_EXPIRED = "Unregistered - registration expired"
REG_PENDING = "Unregistered - registration pending"
REG_FAILED = "Unregistered - registration failed"
REGISTRATION_STATES = (REGISTERED, UNREGISTERED, REG_EXPIRED, REG_PENDING, REG_FAILED)

# Authorization states (S6).
AUTHORIZED = "Authorized"
AUTH_EXPIRED = "Authorization expired"
OUT_OF_COMPLIANCE = "Out of compliance"
NO_LICENSES_IN_USE = "No licenses in use"
EVALUATION = "Evaluation mode"
EVALUATION_EXPIRED = "Evaluation expired"
NOT_APPLICABLE = "Not applicable"
AUTHORIZATION_STATES = (AUTHORIZED, AUTH_EXPIRED, OUT_OF_COMPLIANCE, NO_LICENSES_IN_USE, EVALUATION,
                        EVALUATION_EXPIRED, NOT_APPLICABLE)

# Per license type (S10).
TAG_AUTHORIZED = "Authorized"
TAG_EVALUATION = "Evaluation"
TAG_EVALUATION_EXPIRED = "Evaluation expired"
TAG_AUTH_EXPIRED = "Authorization expired"
TAG_OUT_OF_COMPLIANCE = "Out of compliance"
TAG_INVALID = "Invalid"
TAG_INVALID_TAG = "Invalid tag"
TAG_NOT_AUTHORIZED = "Not authorized"
TAG_WAITING = "Waiting"
TAG_STATES = (TAG_AUTHORIZED, TAG_EVALUATION, TAG_EVALUATION_EXPIRED, TAG_AUTH_EXPIRED, TAG_OUT_OF_COMPLIANCE,
              TAG_INVALID, TAG_INVALID_TAG, TAG_NOT_AUTHORIZED, TAG_WAITING)

# What the agent does next.
REGISTER, RENEW_ID, AUTHORIZE, REPORT_USAGE = "register", "renew_id", "authorize", "report_usage"

# Errors that no retry will cure: the token itself (S5 "registration failed"). Anything else
# (unreachable, TLS, clock skew) is retried every ``retry`` seconds with the error kept (S9).
TOKEN_ERRORS = frozenset({"token_invalid", "token_expired", "token_used_up", "token_revoked"})

TRANSPORTS = ("direct", "onprem", "proxy")  # S4

# Alarm IDs (meter.licensing.alarms: a small fixed family).
ALARM_EVAL_ENDING = "smart-evaluation-ending"
ALARM_EVAL_EXPIRED = "smart-evaluation-expired"
ALARM_REG_FAILING = "smart-registration-failing"
ALARM_AUTH_FAILING = "smart-authorization-failing"
ALARM_AUTH_EXPIRED = "smart-authorization-expired"
ALARM_OUT_OF_COMPLIANCE = "smart-out-of-compliance"
ALARMS = (ALARM_EVAL_ENDING, ALARM_EVAL_EXPIRED, ALARM_REG_FAILING, ALARM_AUTH_FAILING, ALARM_AUTH_EXPIRED,
          ALARM_OUT_OF_COMPLIANCE)


class SmartRefused(Exception):
    """An operation Smart Licensing does not allow now; ``rule`` names why (S4, S1...)."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(f"{rule}: {message}")


@dataclass(frozen=True)
class SmartTimers:
    """Every Smart Licensing period, in seconds (the `[smart]` config section)."""

    evaluation: float = 90 * DAY          # S1
    evaluation_warning: float = 15 * DAY  # "evaluation ending" alarm this long before the end
    id_cert_validity: float = 365 * DAY   # S7: used when the manager does not say
    id_renew: float = 180 * DAY           # S7: renewed every six months
    auth_renew: float = 30 * DAY          # S7
    auth_expiry: float = 90 * DAY         # S7: lapses after 90 days without contact
    usage_interval: float = 6 * 3600.0    # S11
    retry: float = 15 * 60.0              # S9

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name}: expected a positive number of seconds, got {getattr(self, f.name)}")


class Effects(NamedTuple):
    """What the ledger and the alarm board do with the machine's state at ``now``."""

    capacity: dict[str, int]        # per pooled license (P6); UNLIMITED where nothing limits by count
    block_registrations: str        # S2 / R11: a reason, or "" to let registrations through
    alarms: dict[str, tuple[str, str, str]]  # alarm id -> (rule, severity, text) standing now


@dataclass
class SmartState:
    # S1: evaluation time used. It runs only while the node is not registered; S8 resumes it.
    eval_used: float = 0.0
    eval_running_since: float | None = None
    # Registration (S3, S5, S9).
    registration: str = UNREGISTERED
    transport: dict = field(default_factory=lambda: {"kind": "direct"})
    token: str = ""                  # pending token (kept only until the attempt succeeds or fails)
    reregister: bool = False         # S3: register again, moving to another virtual account
    instance_id: str = ""
    smart_account: str = ""
    virtual_account: str = ""
    export_controlled: bool | None = None  # S12
    registered_at: float | None = None
    id_cert_expires_at: float | None = None
    renew_id_after: float | None = None
    hostname: str = ""               # the name last sent to the manager (S14)
    # Authorization (S6, S7).
    authorized_at: float | None = None
    auth_expires_at: float | None = None
    auth_renew_after: float | None = None
    auth_status: str = ""           # "authorized" | "out_of_compliance" as the manager said
    tags: dict = field(default_factory=dict)  # tag -> {"requested","authorized","status"}
    # Usage (S11).
    usage_reported_at: float | None = None
    usage_due: float | None = None
    # Attempts (S9): per action, the last attempt, its result and the next one.
    attempts: dict = field(default_factory=dict)  # action -> {"at","ok","error","next"}
    deregistered_unreported: bool = False  # S8: cleared locally, the manager was not told


class SmartMachine:
    def __init__(self, timers: SmartTimers | None = None, state: SmartState | None = None) -> None:
        self.timers = timers or SmartTimers()
        self.s = state or SmartState()

    # ---- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self.s)

    @classmethod
    def from_dict(cls, data: dict, timers: SmartTimers | None = None) -> SmartMachine:
        known = {f.name for f in fields(SmartState)}
        return cls(timers, SmartState(**{k: v for k, v in data.items() if k in known}))

    # ---- evaluation (S1, S2) ------------------------------------------------------------

    def start_evaluation(self, now: float) -> None:
        """S1: Smart turned on: the 90-day evaluation starts (once; a second call changes nothing)."""
        if self.s.eval_running_since is None and not self.registered(now):
            self.s.eval_running_since = now

    def evaluation_left(self, now: float) -> float:
        used = self.s.eval_used
        if self.s.eval_running_since is not None:
            used += max(0.0, now - self.s.eval_running_since)
        return max(0.0, self.timers.evaluation - used)

    def evaluation_expired(self, now: float) -> bool:
        return self.evaluation_left(now) <= 0

    def _pause_evaluation(self, now: float) -> None:
        if self.s.eval_running_since is not None:
            self.s.eval_used += max(0.0, now - self.s.eval_running_since)
            self.s.eval_running_since = None

    def in_evaluation(self, now: float) -> bool:
        """Evaluation period running: not registered and evaluation time left (S1)."""
        return not self.registered(now) and not self.evaluation_expired(now)

    # ---- registration (S3, S4, S5, S9, S14) ---------------------------------------------

    def registered(self, now: float) -> bool:
        return self.s.registration == REGISTERED and not self._id_expired(now)

    def _id_expired(self, now: float) -> bool:
        return self.s.id_cert_expires_at is not None and now >= self.s.id_cert_expires_at

    def registration_state(self, now: float) -> str:
        """S5."""
        if self.s.registration == REGISTERED and self._id_expired(now):
            return REG_EXPIRED
        return self.s.registration

    def request_registration(self, token: str, now: float, *, transport: dict | None = None,
                             reregister: bool = False) -> None:
        """S3: register with a product-instance token (``reregister``: even if registered, moving
        to another virtual account). S4: the transport cannot change while registered."""
        token = token.strip()
        if not token:
            raise SmartRefused("S3", "a product-instance registration token is needed")
        if self.registered(now) and not reregister:
            raise SmartRefused("S3", "already registered: use reregister to move to another virtual account")
        if transport is not None:
            self.set_transport(transport, now)
        self.s.token, self.s.reregister = token, reregister
        if not self.registered(now):
            self.s.registration = REG_PENDING
        self._schedule(REGISTER, now)

    def set_transport(self, transport: dict, now: float) -> None:
        """S4: Direct, On-Prem or Proxy; refused while registered (deregister first)."""
        kind = transport.get("kind")
        if kind not in TRANSPORTS:
            raise ValueError(f"transport kind: expected one of {TRANSPORTS}, got {kind!r}")
        if self.registered(now) and _transport_key(transport) != _transport_key(self.s.transport):
            raise SmartRefused("S4", f"transport change ({self.s.transport.get('kind')} -> {kind}) refused "
                                     "while registered: deregister first")
        self.s.transport = dict(transport)

    def registered_with(self, result: dict, now: float, *, hostname: str = "") -> None:
        """The manager's answer to register or renew-id (contract C)."""
        first = self.s.registration != REGISTERED or self.s.reregister
        s = self.s
        s.registration = REGISTERED
        s.token, s.reregister, s.deregistered_unreported = "", False, False
        s.instance_id = result["instance_id"]
        s.smart_account = result.get("smart_account", s.smart_account)
        s.virtual_account = result.get("virtual_account", s.virtual_account)
        if "export_controlled" in result:
            s.export_controlled = bool(result["export_controlled"])  # S12
        s.id_cert_expires_at = float(result.get("id_cert_expires_at") or now + self.timers.id_cert_validity)
        s.renew_id_after = float(result.get("renew_id_after") or now + self.timers.id_renew)
        if hostname:
            s.hostname = hostname
        if first:
            s.registered_at = now
        self._pause_evaluation(now)  # S1: registered, the evaluation clock stops
        self._succeeded(REGISTER if first else RENEW_ID, now)
        if first:  # a new registration authorizes and reports at once
            self._schedule(AUTHORIZE, now)
            s.usage_due = now

    def renew_registration_now(self, now: float) -> None:
        """S7, S14: renew the ID certificate now (sends the current hostname)."""
        if not self.registered(now):
            raise SmartRefused("S7", "not registered: nothing to renew")
        self._schedule(RENEW_ID, now)

    def renew_authorization_now(self, now: float) -> None:
        """S7: authorize now."""
        if not self.registered(now):
            raise SmartRefused("S7", "not registered: nothing to authorize")
        self._schedule(AUTHORIZE, now)

    def update_usage_now(self, now: float) -> None:
        """S11: 'update usage details' sends usage now."""
        if not self.registered(now):
            raise SmartRefused("S11", "not registered: usage goes to the manager once registered")
        self.s.usage_due = now

    # ---- authorization (S6, S7, S10) ----------------------------------------------------

    def authorized(self, result: dict, now: float) -> None:
        s = self.s
        s.auth_status = result.get("status", "authorized")
        s.tags = {tag: dict(row) for tag, row in (result.get("tags") or {}).items()}
        s.authorized_at = float(result.get("authorized_at") or now)
        s.auth_expires_at = float(result.get("expires_at") or now + self.timers.auth_expiry)
        s.auth_renew_after = float(result.get("renew_after") or now + self.timers.auth_renew)
        self._succeeded(AUTHORIZE, now)

    def authorization_expired(self, now: float) -> bool:
        return self.s.auth_expires_at is not None and now >= self.s.auth_expires_at

    def authorization_state(self, now: float, in_use: dict[str, int] | None = None) -> str:
        """S6 (``in_use``: per pooled license, for 'No licenses in use')."""
        if not self.registered(now):
            return EVALUATION_EXPIRED if self.evaluation_expired(now) else EVALUATION
        if self.s.authorized_at is None:
            return EVALUATION if not self.evaluation_expired(now) else EVALUATION_EXPIRED
        if self.authorization_expired(now):
            return AUTH_EXPIRED
        if self.s.auth_status == "out_of_compliance":
            return OUT_OF_COMPLIANCE
        if in_use is not None and not any(in_use.values()):
            return NO_LICENSES_IN_USE
        return AUTHORIZED

    def tag_states(self, now: float, in_use: dict[str, int]) -> dict[str, dict]:
        """S10: per license type, its tag, what is in use, what is authorized and its state."""
        rows = {}
        registered = self.registered(now)
        for lic, tag in TAGS.items():
            row = self.s.tags.get(tag)
            if not registered:
                state = TAG_EVALUATION_EXPIRED if self.evaluation_expired(now) else TAG_EVALUATION
            elif self.s.authorized_at is None:
                state = TAG_WAITING
            elif self.authorization_expired(now):
                state = TAG_AUTH_EXPIRED
            elif row is None:
                state = TAG_NOT_AUTHORIZED if in_use.get(lic) else TAG_WAITING
            else:
                state = {"authorized": TAG_AUTHORIZED, "out_of_compliance": TAG_OUT_OF_COMPLIANCE,
                         "invalid": TAG_INVALID, "invalid_tag": TAG_INVALID_TAG,
                         "not_authorized": TAG_NOT_AUTHORIZED}.get(row.get("status", ""), TAG_INVALID)
            rows[lic] = {"tag": tag, "in_use": in_use.get(lic, 0),
                         "authorized": None if row is None else row.get("authorized"),
                         "pool": None if row is None else row.get("pool"), "status": state}
        for tag, row in self.s.tags.items():  # a tag the manager knows and the node does not
            if tag not in LICENSE_FOR_TAG:
                rows[tag] = {"tag": tag, "in_use": 0, "authorized": row.get("authorized"), "status": TAG_INVALID_TAG}
        return rows

    # ---- usage (S11) --------------------------------------------------------------------

    def usage_reported(self, now: float) -> None:
        self.s.usage_reported_at = now
        self.s.usage_due = now + self.timers.usage_interval
        self._succeeded(REPORT_USAGE, now)

    # ---- failures (S9) ------------------------------------------------------------------

    def failed(self, action: str, error: str, now: float, *, code: str = "") -> float | None:
        """An action failed with ``error`` (``code``: the manager's error code, if it answered).
        Returns when it will be tried again (None: not until the administrator acts)."""
        retry_at: float | None = now + self.timers.retry  # S9
        if action == REGISTER:
            if code in TOKEN_ERRORS or code in ("bad_request",):
                self.s.registration = REG_FAILED if not self.registered(now) else self.s.registration
                self.s.token = ""
                retry_at = None  # a new token is needed: retrying the same one cannot help
            elif not self.registered(now):
                self.s.registration = REG_PENDING
        elif code == "unknown_instance":
            # The manager no longer knows this instance (removed there by hand, deregistered, or its
            # ID certificate expired): the registration is gone; a token registers again.
            self._clear_registration(now)
            self.s.registration = REG_FAILED
            retry_at = None
            self.s.attempts[REGISTER] = {"at": now, "ok": False, "error": error, "code": code, "next": None}
        elif action == REPORT_USAGE:
            self.s.usage_due = retry_at
        self.s.attempts[action] = {"at": now, "ok": False, "error": error, "code": code, "next": retry_at}
        return retry_at

    def _succeeded(self, action: str, now: float) -> None:
        nxt = None
        if action in (REGISTER, RENEW_ID):
            nxt = self.s.renew_id_after
        elif action == AUTHORIZE:
            nxt = self.s.auth_renew_after
        elif action == REPORT_USAGE:
            nxt = self.s.usage_due
        self.s.attempts[action] = {"at": now, "ok": True, "error": "", "code": "", "next": nxt}

    def _schedule(self, action: str, at: float) -> None:
        row = self.s.attempts.setdefault(action, {"at": None, "ok": None, "error": "", "code": "", "next": at})
        row["next"] = at

    # ---- deregistration (S8) ------------------------------------------------------------

    def deregistered(self, now: float, *, manager_told: bool) -> None:
        """S8: entitlements go back (when the manager was told) and the node is in evaluation again
        for what remains of the period. Always clears locally."""
        self._clear_registration(now)
        self.s.registration = UNREGISTERED
        self.s.deregistered_unreported = not manager_told

    def _clear_registration(self, now: float) -> None:
        s = self.s
        s.instance_id = s.smart_account = s.virtual_account = s.token = ""
        s.export_controlled = None
        s.registered_at = s.id_cert_expires_at = s.renew_id_after = None
        s.authorized_at = s.auth_expires_at = s.auth_renew_after = None
        s.auth_status, s.tags, s.usage_due, s.reregister = "", {}, None, False
        s.attempts = {}
        if s.eval_running_since is None:
            s.eval_running_since = now  # S8: back to evaluation for what remains

    # ---- what to do next ----------------------------------------------------------------

    def next_action(self, now: float) -> tuple[str | None, float | None]:
        """The agent's next action and when it is due (``at`` <= now: now)."""
        due: list[tuple[float, str]] = []
        s = self.s
        if s.token and (s.registration in (REG_PENDING,) or s.reregister):
            due.append((self._next(REGISTER, now), REGISTER))
        if self.registered(now):
            renew_id = self._next(RENEW_ID, s.renew_id_after if s.renew_id_after is not None else now)
            due.append((renew_id, RENEW_ID))
            auth = self._next(AUTHORIZE, s.auth_renew_after if s.auth_renew_after is not None else now)
            due.append((auth, AUTHORIZE))
            if s.usage_due is not None:
                due.append((s.usage_due, REPORT_USAGE))
        if not due:
            return None, None
        at, action = min(due)
        return action, at

    def _next(self, action: str, default: float) -> float:
        row = self.s.attempts.get(action)
        if row is None or row.get("next") is None:
            return default
        # A failed attempt is retried when it said (S9); an administrator's "now" comes first.
        return row["next"] if row.get("ok") is False else min(row["next"], default)

    # ---- effects on the ledger and alarms (P6, S2, S6) ----------------------------------

    def effects(self, now: float, in_use: dict[str, int] | None = None) -> Effects:
        in_use = in_use or {}
        alarms: dict[str, tuple[str, str, str]] = {}
        capacity = {lic: UNLIMITED for lic in TAGS}
        block = ""
        registered = self.registered(now)
        if not registered:
            left = self.evaluation_left(now)
            if left <= 0:
                # S2 / R11: no new device registrations; existing ones and calls stay.
                block = "Smart evaluation expired and the node is not registered (S2)"
                alarms[ALARM_EVAL_EXPIRED] = ("S2", "error", "Smart Licensing evaluation expired: new device "
                                              "registrations are refused until the node is registered")
            elif left <= self.timers.evaluation_warning:
                alarms[ALARM_EVAL_ENDING] = ("S1", "warning", f"Smart Licensing evaluation ends in "
                                             f"{left / DAY:.1f} days: register the node with a token")
            reg = self.s.attempts.get(REGISTER)
            if self.s.registration in (REG_FAILED, REG_EXPIRED) or (reg and reg.get("ok") is False):
                error = (reg or {}).get("error") or self.s.registration
                alarms[ALARM_REG_FAILING] = ("S9", "warning", f"Smart registration failing: {error}")
            if self.registration_state(now) == REG_EXPIRED:
                alarms[ALARM_REG_FAILING] = ("S7", "error", "Smart registration expired: the ID certificate "
                                             "was not renewed; register again with a token")
            return Effects(capacity, block, alarms)
        renew = self.s.attempts.get(RENEW_ID)
        if renew and renew.get("ok") is False:
            alarms[ALARM_REG_FAILING] = ("S9", "warning", f"Smart registration renewal failing: {renew['error']}")
        auth = self.s.attempts.get(AUTHORIZE)
        if self.authorization_expired(now):
            alarms[ALARM_AUTH_EXPIRED] = ("S7", "error", "Smart authorization expired: no contact with the "
                                          f"manager for {self.timers.auth_expiry / DAY:g} days")
        elif auth and auth.get("ok") is False:
            alarms[ALARM_AUTH_FAILING] = ("S7", "warning", f"Smart authorization renewal failing: {auth['error']}")
        if self.s.authorized_at is not None and not self.authorization_expired(now):
            for lic, tag in TAGS.items():
                row = self.s.tags.get(tag)
                if row is None:
                    continue
                if row.get("status") == "out_of_compliance":
                    # Out of compliance warns and blocks nothing (the guide documents no block).
                    capacity[lic] = UNLIMITED
                else:
                    # P6: what the virtual account's pool leaves this instance once the other
                    # instances' reports are served (the manager's `capacity`), else the pool,
                    # else what was authorized.
                    capacity[lic] = int(row.get("capacity", row.get("pool", row.get("authorized", 0))))
            if self.s.auth_status == "out_of_compliance":
                short = sorted(t for t, r in self.s.tags.items() if r.get("status") == "out_of_compliance")
                alarms[ALARM_OUT_OF_COMPLIANCE] = ("S6", "warning", "Smart Licensing out of compliance: not "
                                                   f"enough licenses in the virtual account for {', '.join(short)}")
        return Effects(capacity, block, alarms)

    # ---- the cluster (S1) ---------------------------------------------------------------

    def cluster_configuration_allowed(self, now: float) -> bool:
        """S1 as the X14.0.1 guide and the seed chapter say: no cluster configuration during the
        evaluation period (X15.3 allows it; docs/licensing-rules.md records the choice)."""
        return self.registered(now)


def cluster_share(capacity: int, own_in_use: float, live_peers: int) -> int:
    """Item 6 / P1 in Smart mode: every peer registers on its own and reports its own usage, and the
    ledger sums the peers' contributions. For the sum to be the virtual account's room (not one
    pool per peer), each peer contributes what it uses plus an equal share of what is left:
    ``capacity`` is what the manager leaves this instance (pool - the others' reports)."""
    if capacity >= UNLIMITED:
        return capacity
    headroom = max(0.0, capacity - own_in_use)
    return int(own_in_use + headroom / max(1, live_peers))


def _transport_key(transport: dict) -> tuple:
    return (transport.get("kind"), transport.get("url", ""), transport.get("host", ""), transport.get("port", 0))

