"""The Smart Licensing agent: runs the state machine's actions against the manager, on the event loop.

Once a second it asks the machine (``meter.licensing.smart``) what is due and does it (register,
renew the ID certificate, authorize, report usage), feeds each result back, saves the state
(``meter.store.smart_state``) and applies the machine's effects: the ledger's capacity per pooled
license (P6), the S2 block on new registrations, and the Smart alarms on the node's AlarmBoard.
The administrator's actions (API, CLI) run at once through the same methods and return what
happened, with the error and the next attempt when it failed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Callable

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meter.licensing import smart
from meter.licensing.model import UNIT_SCALE
from meter.logs import log_event
from meter.smart.settings import SmartSettings
from meter.smart.transport import SmartError, check_transport, post, resolve, ssl_context
from meter.store.smart_state import SmartStore

log = logging.getLogger("meter.smart")
LOOP_SECONDS = 1.0
S8_NOTICE = ("the manager could not be told: remove this product instance in the Smart Software Manager "
             "by hand, or its licenses stay in use there (S8)")


class SmartAgent:
    def __init__(self, settings: SmartSettings, licensing, metering=None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.licensing, self.metering, self.clock = settings, licensing, metering, clock
        self.store = SmartStore(licensing.store.state_dir)
        self.machine, dropped = self.store.load(settings.timers(), licensing.serial, clock())
        self.notice = dropped and f"registration not carried over: {dropped}; register with a new token (S13)"
        if dropped:
            log_event(log, "smart.registration_dropped", logging.WARNING, reason=dropped)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._mode = licensing.license_mode
        if self.active:  # a state switched to Smart without a start time: the evaluation starts now (S1)
            self.machine.start_evaluation(clock())

    # ---- life cycle ---------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.licensing.smart

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._session:
            await self._session.close()
        self.store.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.step(self.clock())
            except Exception:  # a bug here must not stop the agent for good
                log.exception("smart.step_failed")
            await asyncio.sleep(LOOP_SECONDS)

    async def step(self, now: float) -> None:
        """Apply the effects, then do whatever the machine says is due."""
        self.mode_changed(now)
        self.apply(now)
        if not self.active:
            return
        action, at = self.machine.next_action(now)
        if action is not None and at <= now:
            await self.perform(action, scheduled=True)
            self.apply(self.clock())

    def mode_changed(self, now: float) -> None:
        """The license mode changed on disk (`meter mode smart`): the running node follows at once."""
        mode = self.licensing.license_mode
        if mode == self._mode:
            return
        self._mode = mode
        self.machine, _ = self.store.load(self.settings.timers(), self.licensing.serial, now)
        if self.active:
            self.machine.start_evaluation(now)
            self.save()
        log_event(log, "smart.mode_changed", mode=mode)
        if self.metering is not None:
            self.metering.refresh_licenses(now)

    # ---- effects on the ledger and the alarms (P6, S2) -----------------------------------

    def in_use(self) -> dict[str, float]:
        """Licenses in use on this node, by pooled license (RMS: an audio-only SIP call is 0.5)."""
        if self.metering is None:
            return {lic: 0 for lic in smart.TAGS}
        ledger = self.metering.ledger
        return {lic: _number(ledger.in_use(lic) / UNIT_SCALE[lic]) for lic in smart.TAGS}

    def effects(self, now: float) -> smart.Effects:
        return self.machine.effects(now, self.in_use())

    def apply(self, now: float) -> None:
        alarms = self.licensing.alarms
        standing = self.effects(now).alarms if self.active else {}
        for alarm_id in smart.ALARMS:
            if alarm_id in standing:
                rule, severity, text = standing[alarm_id]
                if alarms.raise_(alarm_id, rule, text, now, severity):
                    log_event(log, "smart.alarm", logging.WARNING, alarm=alarm_id, rule=rule, text=text)
            else:
                alarms.clear(alarm_id, "cleared", now)
        if self.active and self.metering is not None:
            effects = self.effects(now)
            in_use = self.in_use()
            live = sum(1 for p in self.metering.ledger.pool.peers(now) if p.alive) or 1
            shares = {lic: smart.cluster_share(n, in_use.get(lic, 0), live) for lic, n in effects.capacity.items()}
            self.metering.apply_smart(effects._replace(capacity=shares), now)

    # ---- the administrator's actions ------------------------------------------------------

    async def register(self, token: str, transport: dict | None = None, *, reregister: bool = False) -> dict:
        """S3: register now with ``token`` (``transport``: S4). Returns the outcome."""
        now = self.clock()
        self._need_smart()
        spec = check_transport(transport) if transport is not None else None
        self.machine.request_registration(token, now, transport=spec, reregister=reregister)
        self.notice = ""
        self.save()
        return await self.perform(smart.REGISTER)

    async def renew_authorization(self) -> dict:
        self._need_smart()
        self.machine.renew_authorization_now(self.clock())
        return await self.perform(smart.AUTHORIZE)

    async def renew_registration(self) -> dict:
        self._need_smart()
        self.machine.renew_registration_now(self.clock())
        return await self.perform(smart.RENEW_ID)

    async def update_usage(self) -> dict:
        self._need_smart()
        self.machine.update_usage_now(self.clock())
        return await self.perform(smart.REPORT_USAGE)

    async def deregister(self) -> dict:
        """S8: tell the manager (entitlements go back) and clear locally whatever it answers."""
        self._need_smart()
        if not self.machine.s.instance_id:
            raise smart.SmartRefused("S8", "not registered")
        async with self._lock:
            now = self.clock()
            try:
                answer = await self._call("deregister", {"sent_at": now}, signed=True)
            except SmartError as exc:
                self.machine.deregistered(self.clock(), manager_told=False)
                self.notice = f"deregistered locally; {S8_NOTICE}. Error: {exc}"
                self.save()
                log_event(log, "smart.deregistered_locally", logging.WARNING, error=str(exc))
                self.apply(self.clock())
                return {"ok": False, "deregistered": True, "manager_told": False, "error": str(exc),
                        "notice": self.notice}
            self.machine.deregistered(self.clock(), manager_told=True)
            self.notice = ""
            self.save()
            log_event(log, "smart.deregistered", returned=answer.get("returned", {}))
            self.apply(self.clock())
            return {"ok": True, "deregistered": True, "manager_told": True, "returned": answer.get("returned", {})}

    def set_transport(self, transport: dict) -> dict:
        """S4: change the transport (refused while registered)."""
        self._need_smart()
        self.machine.set_transport(check_transport(transport), self.clock())
        self.save()
        return redact(self.machine.s.transport)

    def _need_smart(self) -> None:
        if not self.active:
            raise smart.SmartRefused("L2", "the node is in PAK mode: `meter mode smart` first")

    # ---- the actions ----------------------------------------------------------------------

    async def perform(self, action: str, *, scheduled: bool = False) -> dict:
        """Do ``action`` against the manager; feed the result to the machine; the outcome.
        ``scheduled``: the loop's own; skipped when an administrator's action did it meanwhile."""
        async with self._lock:
            now = self.clock()
            if scheduled:
                due, at = self.machine.next_action(now)
                if due != action or at is None or at > now:
                    return {"ok": True, "action": action, "skipped": True}
            try:
                if action == smart.REGISTER:
                    await self._register(now)
                elif action == smart.RENEW_ID:
                    await self._renew_id(now)
                elif action == smart.AUTHORIZE:
                    answer = await self._call("authorize", {"usage": self._usage(), "hostname": self.hostname,
                                                            "sent_at": now}, signed=True)
                    self.machine.authorized(answer, self.clock())
                elif action == smart.REPORT_USAGE:
                    await self._call("usage", {"usage": self._usage(), "sent_at": now}, signed=True)
                    self.machine.usage_reported(self.clock())
            except SmartError as exc:
                retry = self.machine.failed(action, str(exc), self.clock(), code=exc.code)
                self.save()
                log_event(log, f"smart.{action}_failed", logging.WARNING, code=exc.code, error=str(exc),
                          next_attempt=retry)
                return {"ok": False, "action": action, "code": exc.code, "error": str(exc), "next_attempt": retry}
            self.save()
            log_event(log, f"smart.{action}", registration=self.machine.registration_state(self.clock()))
            return {"ok": True, "action": action}

    async def _register(self, now: float) -> None:
        key = ec.generate_private_key(ec.SECP256R1())  # kept only if the manager registers it
        answer = await self._call("register", {
            "token": self.machine.s.token, "hostname": self.hostname, "product": "expressway",
            "serial": self.licensing.serial, "csr_pem": self._csr(key), "sent_at": now})
        self._check_answer(answer, ("instance_id", "id_cert_pem"))
        self.store.write_instance_key(key)
        self.store.save_registration(self.licensing.serial, answer["id_cert_pem"], answer.get("ca_cert_pem", ""))
        self.machine.registered_with(answer, self.clock(), hostname=self.hostname)

    async def _renew_id(self, now: float) -> None:
        """S7, S14: a new ID certificate; the current hostname goes with it."""
        key = self.store.instance_key(create=False)
        if key is None:
            raise SmartError("unknown_instance", "the instance key is missing from the state directory: "
                                                 "register again with a token")
        answer = await self._call("renew-id", {"csr_pem": self._csr(key), "hostname": self.hostname,
                                               "sent_at": now}, signed=True)
        self._check_answer(answer, ("instance_id", "id_cert_pem"))
        self.store.save_registration(self.licensing.serial, answer["id_cert_pem"], answer.get("ca_cert_pem", ""))
        self.machine.registered_with(answer, self.clock(), hostname=self.hostname)

    @staticmethod
    def _check_answer(answer: dict, needed: tuple[str, ...]) -> None:
        missing = [k for k in needed if not answer.get(k)]
        if missing:
            raise SmartError("bad_answer", f"the manager's answer lacks {', '.join(missing)}")

    async def _call(self, endpoint: str, payload: dict, *, signed: bool = False) -> dict:
        transport = resolve(self.machine.s.transport, self.settings.direct_url)
        context = ssl_context(self.settings.ca_file, self.store.get("ca_cert_pem", "") or "")
        key = self.store.instance_key(create=False) if signed else None
        if signed and key is None:
            raise SmartError("unknown_instance", "no instance key in the state directory: register again")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return await post(self._session, transport, endpoint, payload, context=context,
                          timeout=self.settings.timeout, key=key, instance_id=self.machine.s.instance_id)

    def _usage(self) -> dict[str, int]:
        """Usage by tag (contract C): this node's own; the cluster's total is the sum of what each
        peer reports (each registers on its own)."""
        return {smart.TAGS[lic]: n for lic, n in self.in_use().items()}

    def _csr(self, key: ec.EllipticCurvePrivateKey) -> str:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.hostname[:64] or "meter"),
                          x509.NameAttribute(NameOID.SERIAL_NUMBER, self.licensing.serial)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def hostname(self) -> str:
        return self.settings.hostname or socket.gethostname()

    def save(self) -> None:
        self.store.save(self.machine)

    # ---- the view (API, CLI, page, metrics) ------------------------------------------------

    def view(self, now: float | None = None) -> dict:
        now = self.clock() if now is None else now
        m, s = self.machine, self.machine.s
        in_use = self.in_use()
        active = self.active
        action, at = m.next_action(now) if active else (None, None)

        def attempt(name: str) -> dict | None:
            row = s.attempts.get(name)
            return None if row is None else dict(row)

        return {
            "mode": self.licensing.license_mode,
            "registration": {
                "status": m.registration_state(now) if active else smart.UNREGISTERED,
                "registered_at": s.registered_at, "expires_at": s.id_cert_expires_at,
                "renew_after": s.renew_id_after, "last_attempt": attempt(smart.REGISTER),
                "last_renewal": attempt(smart.RENEW_ID)},
            "authorization": {
                "status": m.authorization_state(now, in_use) if active else smart.NOT_APPLICABLE,
                "authorized_at": s.authorized_at, "expires_at": s.auth_expires_at,
                "renew_after": s.auth_renew_after, "last_attempt": attempt(smart.AUTHORIZE)},
            "evaluation": {"days_left": round(m.evaluation_left(now) / smart.DAY, 2),
                           "expired": m.evaluation_expired(now), "in_evaluation": active and m.in_evaluation(now)},
            "smart_account": s.smart_account, "virtual_account": s.virtual_account,
            "instance_id": s.instance_id, "export_controlled": s.export_controlled,
            "hostname": s.hostname or self.hostname, "serial": self.licensing.serial,
            "transport": redact(s.transport),
            "direct_url": self.settings.direct_url,
            "usage": [{"license": lic, **row} for lic, row in m.tag_states(now, in_use).items()],
            "usage_reported_at": s.usage_reported_at, "last_usage_report": attempt(smart.REPORT_USAGE),
            "next_action": {"action": action, "at": at} if action else None,
            "deregistered_unreported": s.deregistered_unreported,
            "notice": self.notice or (S8_NOTICE if s.deregistered_unreported else ""),
            "cluster_configuration_allowed": (not active) or m.cluster_configuration_allowed(now),
        }


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


def redact(transport: dict) -> dict:
    """A transport to show: the proxy password never leaves the node."""
    shown = dict(transport)
    if shown.get("password"):
        shown["password"] = "********"
    return shown
