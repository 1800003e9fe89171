"""Contract C, the manager's side, free of HTTP: ``Protocol.handle(method, path, headers, body)``
returns ``(status, json_body)`` for each of register, renew-id, authorize, usage, deregister
(docs/smart-protocol.md). The server (``meter.ssm.server``) only moves bytes.

Checks, in order: a signed request names a registered instance (``unknown_instance``) and is
signed by its ID certificate's key over ``method + "\\n" + path + "\\n" + sha256_hex(body)``
(``bad_signature``); the body is a JSON object (``bad_request``); ``sent_at`` is within an hour of
the manager's clock (``clock_skew``); the ID certificate has not expired (``unknown_instance``);
then the fields (``bad_request``) and the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from meter.ssm.ca import CAError, CertificateAuthority
from meter.ssm.clock import Clock
from meter.ssm.errors import SmartError
from meter.ssm.state import Instance, State, check_usage

MAX_SKEW = 3600.0  # seconds between sent_at and the manager's clock (contract C); a clock, not a timer: never scaled
PRODUCT = "expressway"
RENEW_ID_DAYS = 180  # S7: a registration lasts a year and is renewed every six months
ROUTES = ("register", "renew-id", "authorize", "usage", "deregister")


def signed_message(method: str, path: str, body: bytes) -> bytes:
    """What ``X-Signature`` signs (contract C): the path is the request's own, base included
    (``/SmartTransport/v1/authorize``), without a query."""
    return f"{method}\n{path}\n{hashlib.sha256(body).hexdigest()}".encode()


def _text(body: dict, key: str, *, limit: int = 255) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise SmartError("bad_request", f"{key}: expected a non-empty string of at most {limit} characters")
    return value


class Protocol:
    def __init__(self, state: State, ca: CertificateAuthority, clock: Clock) -> None:
        self.state = state
        self.ca = ca
        self.clock = clock

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        route = path.rsplit("/v1/", 1)[-1] if "/v1/" in path else ""
        try:
            if method != "POST" or route not in ROUTES:
                raise SmartError("bad_request", f"no such request: {method} {path} (POST .../v1/{{{'|'.join(ROUTES)}}})")
            instance = None if route == "register" else self._verify(method, path, headers, body)
            request = self._parse(body)
            self._check_clock(request)
            if instance is not None and self.clock.now() >= instance.id_cert_expires_at:
                # S7: a registration not renewed within its year lapses; the node must register again.
                # After the clock check: a manager whose clock is off says so, not "expired".
                raise SmartError("unknown_instance", "this instance's registration (ID certificate) has expired: register again")
            if route == "register":
                return 200, self._register(request)
            if route == "renew-id":
                return 200, self._renew_id(instance, request)
            if route == "authorize":
                hostname = _text(request, "hostname", limit=253) if "hostname" in request else None
                return 200, self.state.authorize(instance.instance_id, check_usage(request.get("usage")), self.clock,
                                                 hostname)
            if route == "usage":
                now = self.clock.now()
                self.state.report_usage(instance.instance_id, check_usage(request.get("usage")), now)
                return 200, {"accepted_at": now}
            return 200, {"returned": self.state.deregister(instance.instance_id, self.clock.now())}
        except SmartError as exc:
            return exc.status, exc.body()

    # --- checks common to every request -----------------------------------------------------------

    def _verify(self, method: str, path: str, headers, body: bytes) -> Instance:
        instance_id = headers.get("X-Instance-Id")
        signature = headers.get("X-Signature")
        if not instance_id:
            raise SmartError("unknown_instance", "X-Instance-Id missing: register first")
        instance = self.state.instance(instance_id)
        if not signature:
            raise SmartError("bad_signature", "X-Signature missing")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise SmartError("bad_signature", "X-Signature is not base64") from None
        public_key = x509.load_pem_x509_certificate(instance.id_cert_pem.encode()).public_key()
        try:
            public_key.verify(raw, signed_message(method, path, body), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SmartError("bad_signature", "the signature does not verify with this instance's ID certificate") from None
        return instance

    @staticmethod
    def _parse(body: bytes) -> dict:
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SmartError("bad_request", f"body is not JSON: {exc}") from None
        if not isinstance(request, dict):
            raise SmartError("bad_request", "body must be a JSON object")
        return request

    def _check_clock(self, request: dict) -> None:
        sent_at = request.get("sent_at")
        if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not math.isfinite(sent_at):
            raise SmartError("bad_request", "sent_at: expected the sender's clock as epoch seconds")
        skew = sent_at - self.clock.now()
        if abs(skew) > MAX_SKEW:
            raise SmartError("clock_skew", f"sent_at is {skew:+.0f} s from the manager's clock (more than {MAX_SKEW:.0f} s)")

    # --- requests ---------------------------------------------------------------------------------

    def _issuer(self, csr_pem: str):
        def issue(instance_id: str, expires_at: float) -> str:
            try:
                return self.ca.issue_id_cert(csr_pem, instance_id, self.clock.now(), expires_at)
            except CAError as exc:
                raise SmartError("bad_request", str(exc)) from None
        return issue

    def _identity(self, instance: Instance, smart_account: str) -> dict:
        return {"instance_id": instance.instance_id, "id_cert_pem": instance.id_cert_pem,
                "ca_cert_pem": self.ca.cert_pem, "smart_account": smart_account,
                "virtual_account": instance.virtual_account, "export_controlled": instance.export_controlled,
                "id_cert_expires_at": instance.id_cert_expires_at,
                "renew_id_after": self.clock.now() + self.clock.span(RENEW_ID_DAYS)}

    def _register(self, request: dict) -> dict:
        token = request.get("token")
        if not isinstance(token, str):
            raise SmartError("bad_request", "token: expected the registration token as a string")
        hostname = _text(request, "hostname", limit=253)
        serial = _text(request, "serial", limit=64)
        product = _text(request, "product", limit=64)
        if product != PRODUCT:
            raise SmartError("bad_request", f"product: this manager registers {PRODUCT!r}, not {product!r}")
        csr_pem = _text(request, "csr_pem", limit=16384)
        instance, account = self.state.register(token, hostname, serial, product, self.clock, self._issuer(csr_pem))
        return self._identity(instance, account["smart_account"])

    def _renew_id(self, instance: Instance, request: dict) -> dict:
        hostname = _text(request, "hostname", limit=253)
        csr_pem = _text(request, "csr_pem", limit=16384)
        renewed = self.state.renew_id(instance.instance_id, hostname, self.clock, self._issuer(csr_pem))
        account = next(a for a in self.state.accounts() if a["virtual_account"] == renewed.virtual_account)
        return self._identity(renewed, account["smart_account"])
