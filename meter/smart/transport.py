"""How the agent reaches the Smart Software Manager (S4, contract C): JSON over HTTPS.

Direct: ``[smart] direct_url``. On-Prem: ``https://host[:port]/SmartTransport``. Proxy: Direct
through an HTTP CONNECT proxy with basic authentication (aiohttp's ``proxy=`` and a
Proxy-Authorization header: ``proxy_auth=`` is deprecated in aiohttp 3.14).
Every failure becomes a ``SmartError`` whose text a lab can act on: who could not be reached and
how, which certificate issuer was not trusted, which host the certificate was not for, what the
manager refused and why.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

# The manager's error codes (contract C) and what the administrator should do about each.
MANAGER_ERRORS = {
    "token_invalid": "the registration token is not valid: copy it again from the manager's virtual account",
    "token_expired": "the registration token has expired: create a new token in the manager",
    "token_used_up": "the registration token has been used as many times as it allows: create a new token",
    "token_revoked": "the registration token was revoked in the manager: create a new token",
    "clock_skew": "this node's clock is more than one hour off the manager's: fix the node's time (NTP)",
    "unknown_instance": "the manager does not know this instance (removed there?): register again with a token",
    "bad_signature": "the manager could not verify this node's signature: register again with a token",
    "bad_request": "the manager refused the request as malformed",
}
# OpenSSL X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
X509_HOST_MISMATCH = frozenset({62, 64})


class SmartError(Exception):
    """An attempt that failed: ``code`` is the manager's error code, or one of ``unreachable``,
    ``tls``, ``tls_host``, ``proxy``, ``bad_answer``; ``str()`` is the text shown to the lab."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Transport:
    kind: str                        # direct | onprem | proxy
    base_url: str                    # https://host[:port]/SmartTransport
    proxy: str | None = None         # http://host:port
    proxy_user: str = ""
    proxy_password: str = ""

    @property
    def proxy_headers(self) -> dict[str, str] | None:
        """Basic authentication to the proxy (RFC 7235 Proxy-Authorization on the CONNECT)."""
        if not self.proxy_user:
            return None
        return {"Proxy-Authorization": aiohttp.encode_basic_auth(self.proxy_user, self.proxy_password)}

    def describe(self) -> str:
        if self.kind == "proxy":
            return f"Proxy {self.proxy} to {self.base_url}"
        return f"{'On-Prem' if self.kind == 'onprem' else 'Direct'} {self.base_url}"


def check_transport(spec: dict) -> dict:
    """S4: a transport as the API and CLI give it, checked; ValueError names what is wrong."""
    kind = spec.get("kind", "direct")
    if kind == "direct":
        return {"kind": "direct"}
    if kind == "onprem":
        url = str(spec.get("url", ""))
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or not parts.path.rstrip("/").endswith("/SmartTransport"):
            raise ValueError(f"onprem url: expected https://host[:port]/SmartTransport, got {url!r}")
        return {"kind": "onprem", "url": url.rstrip("/")}
    if kind == "proxy":
        host, port = str(spec.get("host", "")).strip(), spec.get("port")
        if not host or any(c in host for c in "/@ "):
            raise ValueError(f"proxy host: expected an IPv4 address or FQDN, got {host!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValueError(f"proxy port: expected 1..65535, got {port!r}")
        return {"kind": "proxy", "host": host, "port": port, "user": str(spec.get("user", "")),
                "password": str(spec.get("password", ""))}
    raise ValueError(f"transport kind: expected direct, onprem or proxy, got {kind!r}")


def resolve(spec: dict, direct_url: str) -> Transport:
    if spec.get("kind") == "onprem":
        return Transport("onprem", spec["url"])
    if spec.get("kind") == "proxy":
        return Transport("proxy", direct_url.rstrip("/"), f"http://{spec['host']}:{spec['port']}",
                         spec.get("user", ""), spec.get("password", ""))
    return Transport("direct", direct_url.rstrip("/"))


def ssl_context(ca_file: str, ca_pem: str) -> ssl.SSLContext:
    """Trust ``ca_file``, else the CA the manager sent at registration, else the system store."""
    context = ssl.create_default_context()
    if ca_file:
        context = ssl.create_default_context(cafile=ca_file)
    elif ca_pem:
        context = ssl.create_default_context(cadata=ca_pem)
    return context


def sign(key: ec.EllipticCurvePrivateKey, method: str, path: str, body: bytes) -> str:
    """Contract C: ECDSA P-256 / SHA-256 over ``method \\n path \\n sha256_hex(body)``, base64."""
    message = f"{method}\n{path}\n{hashlib.sha256(body).hexdigest()}".encode()
    return base64.b64encode(key.sign(message, ec.ECDSA(hashes.SHA256()))).decode()


async def post(session: aiohttp.ClientSession, transport: Transport, endpoint: str, payload: dict, *,
               context: ssl.SSLContext, timeout: float, key: ec.EllipticCurvePrivateKey | None = None,
               instance_id: str = "") -> dict:
    """POST ``{base}/v1/<endpoint>``; the manager's JSON answer or a SmartError."""
    url = f"{transport.base_url}/v1/{endpoint}"
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Instance-Id"] = instance_id
        headers["X-Signature"] = sign(key, "POST", urlsplit(url).path, body)
    where = transport.describe()
    try:
        async with session.post(url, data=body, headers=headers, ssl=context, proxy=transport.proxy,
                                proxy_headers=transport.proxy_headers,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
            text = await reply.text()
            try:
                answer = json.loads(text) if text else {}
            except ValueError:
                answer = None
            if reply.status >= 400:
                raise _manager_error(reply.status, answer, text, where)
            if not isinstance(answer, dict):
                raise SmartError("bad_answer", f"the manager at {where} answered {reply.status} without JSON")
            return answer
    except SmartError:
        raise
    except aiohttp.ClientHttpProxyError as exc:
        # 407 is the standard answer; tinyproxy's BasicAuth answers 401.
        what = (f"the proxy wants credentials ({exc.status}): check the proxy user name and password"
                if exc.status in (401, 407) else f"the proxy answered {exc.status} {exc.message}")
        raise SmartError("proxy", f"proxy {transport.proxy} refused the connection: {what}") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise await _tls_error(exc, session, transport, url) from None
    except aiohttp.ClientSSLError as exc:
        raise SmartError("tls", f"TLS with {where} failed: {exc}") from None
    except asyncio.TimeoutError:
        raise SmartError("unreachable", f"manager unreachable: no answer from {where} within {timeout:g} s") from None
    except aiohttp.ClientProxyConnectionError as exc:
        raise SmartError("unreachable", f"proxy unreachable: {transport.proxy}: {_why(exc)}") from None
    except aiohttp.ClientConnectorError as exc:
        raise SmartError("unreachable", f"manager unreachable: {where}: {_why(exc)}") from None
    except aiohttp.ClientError as exc:
        raise SmartError("unreachable", f"manager unreachable: {where}: {exc}") from None


def _why(exc: aiohttp.ClientConnectorError) -> str:
    cause = exc.os_error
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    return cause.strerror or str(cause) if isinstance(cause, OSError) else str(exc)


def _manager_error(status: int, answer, text: str, where: str) -> SmartError:
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict) and error.get("code"):
        code = str(error["code"])
        hint = MANAGER_ERRORS.get(code, "")
        message = str(error.get("message", ""))
        return SmartError(code, f"{code}: {hint or message}" + (f" ({message})" if hint and message else ""))
    return SmartError("bad_answer", f"the manager at {where} answered {status}: {text[:200]}")


async def _tls_error(exc: aiohttp.ClientConnectorCertificateError, session: aiohttp.ClientSession,
                     transport: Transport, url: str) -> SmartError:
    """Name the issuer of the certificate that was not trusted, or the host it was not for."""
    cert = exc.certificate_error
    host = urlsplit(url).hostname
    if getattr(cert, "verify_code", None) in X509_HOST_MISMATCH:
        return SmartError("tls_host", f"certificate host mismatch: the manager's certificate is not valid for "
                                      f"{host!r} ({getattr(cert, 'verify_message', cert)}); use the name it was issued for")
    issuer, subject = await _peer_names(session, transport, url)
    reason = getattr(cert, "verify_message", "") or str(cert)
    return SmartError("tls", f"TLS failure: the certificate presented for {host} (subject {subject}) is issued by "
                             f"{issuer}, which this node does not trust ({reason}): an intercepting proxy, or set "
                             f"[smart] ca_file to the manager's CA")


async def _peer_names(session: aiohttp.ClientSession, transport: Transport, url: str) -> tuple[str, str]:
    """The issuer and subject of the certificate the far end presents, read without trusting it
    (through the proxy's CONNECT tunnel for the Proxy transport)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    writer = None
    try:
        if transport.proxy:
            proxy = urlsplit(transport.proxy)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(proxy.hostname, proxy.port), 5)
            extra = "".join(f"{k}: {v}\r\n" for k, v in (transport.proxy_headers or {}).items())
            writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if b" 200" not in head.split(b"\r\n", 1)[0]:
                return "an unknown issuer", "unknown"
            await asyncio.wait_for(writer.start_tls(insecure, server_hostname=host), 5)
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=insecure, server_hostname=host), 5)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
        der = None
    finally:
        if writer is not None:
            writer.close()
    if not der:
        return "an unknown issuer", "unknown"
    cert = x509.load_der_x509_certificate(der)
    return cert.issuer.rfc4514_string(), cert.subject.rfc4514_string()
