"""Admission: who may use the node, asked by the proxy core and the registrar before they act.

Three checks, cheapest first:

1. the source allow-list (``[auth] allow``), for every request, standalone and inline: outside it
   a request is dropped or refused 403 before any transaction exists;
2. standalone with ``[auth] enabled``: a REGISTER carries valid digest credentials (RFC 3261
   §22.2, 401 challenge otherwise) of the user who owns its To AOR (403 otherwise), so `Contact: *`
   and every binding change come from the alias's owner only;
3. standalone with ``[auth] enabled``: an initial request from a source that is neither a
   registered flow of its From AOR, a zone peer nor the upstream is handled by ``[auth] invite``:
   a 407 challenge (RFC 3261 §22.3), 403, or routing to zones only.

Scanner resistance: an unauthenticated REGISTER or INVITE gets the same 401/407 whatever its alias
(known, registered or unknown), before the location service is even asked; wrong credentials, an
unknown user and a replayed nonce get the same new challenge. Only the log tells them apart.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from meter.codecs.sip import Request
from meter.logs import log_event
from meter.sip.auth.digest import Credentials, DigestError, challenge, parse_credentials, response
from meter.sip.auth.nonces import NonceTable
from meter.sip.auth.settings import AuthSettings
from meter.sip.counters import SipCounters
from meter.sip.peer import Peer
from meter.sip.router import Located, Target

log = logging.getLogger("meter.sip.auth")

ADMITTED = object()
# A source outside the allow-list is logged once per this many seconds, not per request: a flood
# from outside must not become a flood of log lines (issue 10: 12 MB of log). The table of sources
# logged is emptied when it reaches LOGGED_SOURCES_CAP, so its memory stays bounded.
OUTSIDER_LOG_INTERVAL = 10.0
LOGGED_SOURCES_CAP = 4096
"""``Admission.initial``: the request is routed as usual."""

# Why digest authentication failed: the label of meter_sip_auth_failures_total, a small fixed set
# (the log line keeps the detail: which algorithm, which AOR).
FAIL_MALFORMED = "malformed"  # Authorization / Proxy-Authorization that does not parse
FAIL_ALGORITHM = "algorithm"  # an algorithm the node did not offer
FAIL_URI = "uri_mismatch"  # digest uri is not the Request-URI
FAIL_UNKNOWN_USER = "unknown_user"
FAIL_WRONG_PASSWORD = "wrong_password"
FAIL_REPLAY = "replay"  # replayed nonce-count
FAIL_NOT_OWNER = "not_owner"  # authenticated, but not the owner of the To (REGISTER) / From (INVITE) AOR
AUTH_FAILURES = (FAIL_MALFORMED, FAIL_ALGORITHM, FAIL_URI, FAIL_UNKNOWN_USER, FAIL_WRONG_PASSWORD, FAIL_REPLAY,
                 FAIL_NOT_OWNER)


class CredentialStore(Protocol):
    def lookup(self, user: str, realm: str, now: float):
        """The user's entry (``.ha1(algorithm)``), or None."""


@dataclass(frozen=True)
class AdmissionPolicy:
    """What the composition gives the SIP node: the settings, the credentials, and which source
    addresses are zone peers (always admitted, never challenged)."""

    settings: AuthSettings
    credentials: CredentialStore
    trusted: Callable[[str], bool] = lambda host: False


class Admission:
    def __init__(self, policy: AdmissionPolicy, *, inline: bool, upstream: Peer | None, location, router,
                 clock, reply: Callable, counters: SipCounters | None = None) -> None:
        s = policy.settings
        self.settings = s
        self.credentials = policy.credentials
        self.trusted = policy.trusted
        self.upstream = upstream
        self.location = location
        self.router = router
        self.clock = clock
        self._reply = reply  # (txn, status, reason=None, headers=())
        self.counters = counters if counters is not None else SipCounters()
        self.digest = s.enabled and not inline  # inline, the upstream authenticates (RFC 3261 §22.3)
        self.nonces = NonceTable(s.nonce_lifetime)
        self._networks = [ipaddress.ip_network(a, strict=False) for a in s.allow]
        self._exact = {str(n.network_address) for n in self._networks if n.num_addresses == 1}
        self._outsiders_logged: dict[str, float] = {}  # source host -> when it was last logged

    # -- 1. the source allow-list ------------------------------------------------------------------------

    def outsider(self, req: Request, source: Peer) -> str | None:
        """None when the source may send; else what to do with the request: "drop" or "refuse"."""
        if not self._networks or self._allowed(source.host):
            return None
        now, logged = self.clock.time(), self._outsiders_logged
        last = logged.get(source.host)
        if last is None or now - last >= OUTSIDER_LOG_INTERVAL:
            if len(logged) >= LOGGED_SOURCES_CAP:
                logged.clear()
            logged[source.host] = now
            log_event(log, "sip.admission.outside_allow_list", logging.INFO, source=str(source),
                      user_agent=req.user_agent or "", method=req.method, action=self.settings.outsiders)
        return self.settings.outsiders

    def _allowed(self, host: str) -> bool:
        if host in self._exact or self.trusted(host) or (self.upstream is not None and host == self.upstream.host):
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    # -- 2. REGISTER (RFC 3261 §22.2, §10.3 step 3) --------------------------------------------------------

    def register(self, txn, req: Request, source: Peer) -> bool:
        """True when the REGISTER may go on to the registrar; False when it was answered here."""
        if not self.digest:
            return True
        user = self._authenticate(txn, req, source, "authorization", 401, "WWW-Authenticate")
        if user is None:
            return False
        if req.to.uri.user != user:  # RFC 3261 §10.3 step 3: the user must own the AOR
            self._failed(req, source, user, FAIL_NOT_OWNER, f"{user} does not own {req.to.uri.aor}")
            self._reply(txn, 403, "Forbidden - not the owner of this address")
            return False
        return True

    # -- 3. initial requests (RFC 3261 §22.3) -----------------------------------------------------------------

    def initial(self, txn, req: Request, source: Peer):
        """``ADMITTED``; a ``Located`` that limits where the request may go (policy "route"); or
        None when the request was answered here (407 challenge, 403)."""
        if not self.digest or self._known_source(req, source):
            return ADMITTED
        policy = self.settings.invite
        if policy == "refuse":
            self._refused(req, source, "unauthenticated source")
            self._reply(txn, 403, "Forbidden - authentication required")
            return None
        if policy == "route":
            hop = self.router.zone_hop(req)
            if hop is None:
                self._refused(req, source, "unauthenticated source, not for a zone")
                self._reply(txn, 403, "Forbidden - authentication required")
                return None
            return Located([Target(None, hop)], None, False)
        user = self._authenticate(txn, req, source, "proxy-authorization", 407, "Proxy-Authenticate")
        if user is None:
            return None
        if req.from_.uri.user != user:  # the caller's identity is the authenticated user's own
            self._failed(req, source, user, FAIL_NOT_OWNER, f"{user} does not own {req.from_.uri.aor}")
            self._reply(txn, 403, "Forbidden - not the owner of this address")
            return None
        self._consume_credentials(req)
        return ADMITTED

    def _consume_credentials(self, req: Request) -> None:
        """RFC 3261 §22.3: the credentials for this realm were for the node; they go no further (the
        callee could otherwise try passwords against the response offline). Other realms' stay, for
        the proxies they are meant for (Kamailio's consume_credentials does the same)."""
        values = req.header_values("proxy-authorization")
        others = [v for v in values if not self._for_realm(v)]
        req.remove_header("proxy-authorization")
        for value in others:
            req.add_header("Proxy-Authorization", value)

    def _for_realm(self, value: str) -> bool:
        try:
            return parse_credentials(value).realm == self.settings.realm
        except DigestError:
            return False

    def _known_source(self, req: Request, source: Peer) -> bool:
        """A zone peer, the upstream, or the registered flow of the From alias (RFC 5626 style:
        same transport, address and port as its binding)."""
        if self.trusted(source.host) or self.router.from_upstream(source):
            return True
        flow = (source.transport, source.host, source.port)
        for b in self.location.lookup(req.from_.uri.aor, self.clock.time()):
            s = b.source
            if s is not None and (s.transport, s.host, s.port) == flow:
                return True
        return False

    # -- digest ---------------------------------------------------------------------------------------------

    def _authenticate(self, txn, req: Request, source: Peer, header: str, status: int, challenge_header: str):
        """The authenticated user name, or None once the request was challenged."""
        now = self.clock.time()
        stale = False
        realm = self.settings.realm
        for value in req.header_values(header):
            try:
                cred = parse_credentials(value)
            except DigestError as err:
                self._failed(req, source, "", FAIL_MALFORMED, str(err))
                break
            if cred.realm != realm:
                continue  # RFC 3261 §22.3: credentials for another realm are not ours to check
            verdict, detail = self._verify(cred, req, now)
            if verdict == "ok":
                return cred.username
            if verdict == "stale":
                stale = True
                log_event(log, "sip.auth.stale_nonce", logging.DEBUG, source=str(source), user=cred.username)
            else:
                self._failed(req, source, cred.username, verdict, detail)
            break
        nonce = self.nonces.issue(now)
        headers = [(challenge_header, challenge(realm, nonce, alg, stale=stale)) for alg in self.settings.algorithms]
        self._reply(txn, status, None, headers=headers)
        return None

    def _verify(self, cred: Credentials, req: Request, now: float) -> tuple[str, str]:
        """("ok" | "stale" | one of AUTH_FAILURES, why in words for the log)."""
        if cred.algorithm not in self.settings.algorithms:
            return FAIL_ALGORITHM, f"algorithm {cred.algorithm} not offered"
        if cred.uri.lower() != req.uri.lower():  # RFC 7616 §3.4.6: the digest is for this request
            return FAIL_URI, "digest uri is not the Request-URI"
        entry = self.credentials.lookup(cred.username, cred.realm, now)
        if entry is None:
            return FAIL_UNKNOWN_USER, "unknown user"
        expected = response(cred.algorithm, entry.ha1(cred.algorithm), cred.nonce, req.method, cred.uri,
                            cred.qop, cred.nc, cred.cnonce)
        if not hmac.compare_digest(expected, cred.response):
            return FAIL_WRONG_PASSWORD, "wrong password"
        check = self.nonces.check(cred.nonce, cred.nc if cred.qop else "", now)
        if check == "replay":
            return FAIL_REPLAY, "replayed nonce-count"
        return check, check

    def _failed(self, req: Request, source: Peer, user: str, kind: str, reason: str) -> None:
        """One line per failure: source and User-Agent, never a password or a hash; and one more on
        meter_sip_auth_failures_total{reason=kind} (``kind``: one of AUTH_FAILURES)."""
        self.counters.auth_failures[kind] += 1
        log_event(log, "sip.auth.failed", logging.WARNING, source=str(source), user_agent=req.user_agent or "",
                  method=req.method, user=user, reason=reason)

    def _refused(self, req: Request, source: Peer, reason: str) -> None:
        log_event(log, "sip.auth.refused", logging.WARNING, source=str(source), user_agent=req.user_agent or "",
                  method=req.method, reason=reason)
