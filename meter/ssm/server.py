"""`meter ssm serve`: the manager over HTTPS (aiohttp), with its CA's server certificate.

    POST /SmartTransport/v1/{register,renew-id,authorize,usage,deregister}   contract C
    /admin/...                                                             JSON, bearer token
    GET  /                                                                 the lab admin's page

The admin token: env ``METER_SSM_ADMIN_TOKEN``, else ``<state_dir>/admin-token`` (made 0600 by
``meter ssm init``). The page shows no token in full: it is open to whoever reaches the port.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import ssl
import time
from pathlib import Path

from aiohttp import web

from meter.ssm.ca import CertificateAuthority
from meter.ssm.errors import AdminError, SmartError
from meter.ssm.page import render_page
from meter.ssm.protocol import Protocol
from meter.ssm.settings import SsmSettings
from meter.ssm.state import State

BASE = "/SmartTransport"
ADMIN_TOKEN_FILE = "admin-token"
MAX_BODY = 64 * 1024
log = logging.getLogger("meter.ssm")


class ServeError(Exception):
    """The server cannot start (the port is taken...); the message says why."""


def admin_token(state_dir: Path) -> str:
    token = os.environ.get("METER_SSM_ADMIN_TOKEN")
    if token:
        return token
    return (state_dir / ADMIN_TOKEN_FILE).read_text(encoding="utf-8").strip()


def build_app(settings: SsmSettings, state: State, ca: CertificateAuthority, token: str) -> web.Application:
    protocol = Protocol(state, ca, settings.clock)
    clock = settings.clock
    app = web.Application(client_max_size=MAX_BODY)

    async def smart(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            error = SmartError("bad_request", f"body larger than {MAX_BODY} bytes")
            return web.json_response(error.body(), status=413)
        status, answer = protocol.handle(request.method, request.path, request.headers, body)
        code = answer["error"]["code"] if status != 200 else "ok"
        log.info("%s %s instance=%s -> %d %s", request.method, request.path,
                 request.headers.get("X-Instance-Id", "-"), status, code)
        return web.json_response(answer, status=status)

    def admin(handler):
        async def checked(request: web.Request) -> web.Response:
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), token.encode()):
                return web.json_response({"error": "admin bearer token required"}, status=401)
            try:
                return await handler(request)
            except AdminError as exc:
                return web.json_response({"error": str(exc)}, status=404 if str(exc).startswith("no ") else 400)
        return checked

    async def body_of(request: web.Request) -> dict:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AdminError("body is not JSON") from None
        if not isinstance(data, dict):
            raise AdminError("body must be a JSON object")
        return data

    async def get_state(request: web.Request) -> web.Response:
        return web.json_response(state.overview(clock))

    async def get_instances(request: web.Request) -> web.Response:
        return web.json_response({"items": state.instances(clock.now())})

    async def get_tokens(request: web.Request) -> web.Response:
        return web.json_response({"items": state.tokens(clock)})

    async def get_ca(request: web.Request) -> web.Response:
        return web.Response(text=ca.cert_pem, content_type="application/x-pem-file")

    async def add_account(request: web.Request) -> web.Response:
        data = await body_of(request)
        smart_account, virtual_account = data.get("smart_account"), data.get("virtual_account")
        if not isinstance(smart_account, str) or not isinstance(virtual_account, str):
            raise AdminError("smart_account and virtual_account: expected strings")
        state.add_account(smart_account, virtual_account, clock.now())
        return web.json_response({"smart_account": smart_account, "virtual_account": virtual_account}, status=201)

    async def set_pool(request: web.Request) -> web.Response:
        data = await body_of(request)
        va, tag = request.match_info["va"], request.match_info["tag"]
        end_at = data.get("end_at")
        if end_at is not None and (isinstance(end_at, bool) or not isinstance(end_at, (int, float))):
            raise AdminError("end_at: expected epoch seconds or null")
        state.set_pool(va, tag, data.get("quantity"), end_at)
        return web.json_response(state.compliance(va, clock.now())[tag])

    async def create_token(request: web.Request) -> web.Response:
        data = await body_of(request)
        va = data.get("virtual_account")
        if not isinstance(va, str):
            raise AdminError("virtual_account: expected a string")
        days, max_uses = data.get("expires_days", 30), data.get("max_uses")
        if isinstance(days, bool) or not isinstance(days, (int, float)):
            raise AdminError("expires_days: expected a number")
        if max_uses is not None and (isinstance(max_uses, bool) or not isinstance(max_uses, int)):
            raise AdminError("max_uses: expected an integer or null")
        value = state.create_token(va, clock, expires_days=days, max_uses=max_uses,
                                   export_controlled=bool(data.get("export_controlled", False)),
                                   description=str(data.get("description", "")))
        created = next(t for t in state.tokens(clock) if t["token"] == value)
        return web.json_response(created, status=201)

    async def revoke_token(request: web.Request) -> web.Response:
        data = await body_of(request)
        if not isinstance(data.get("token"), str):
            raise AdminError("token: expected a string")
        state.revoke_token(data["token"], clock.now())
        return web.json_response({"revoked": True})

    async def transfer(request: web.Request) -> web.Response:
        data = await body_of(request)
        if not isinstance(data.get("virtual_account"), str):
            raise AdminError("virtual_account: expected a string")
        state.transfer(request.match_info["instance"], data["virtual_account"])
        return web.json_response({"instance_id": request.match_info["instance"],
                                  "virtual_account": data["virtual_account"]})

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=render_page(state.overview(clock)), content_type="text/html")

    async def not_smart(request: web.Request) -> web.Response:
        return web.json_response(SmartError("bad_request", f"no such request: {request.method} {request.path}").body(),
                                 status=404)

    app.router.add_post(BASE + "/v1/{route}", smart)
    app.router.add_route("*", BASE + "/{tail:.*}", not_smart)
    app.router.add_get("/admin/state", admin(get_state))
    app.router.add_get("/admin/instances", admin(get_instances))
    app.router.add_get("/admin/tokens", admin(get_tokens))
    app.router.add_get("/admin/ca-cert", admin(get_ca))
    app.router.add_post("/admin/accounts", admin(add_account))
    app.router.add_put("/admin/pools/{va}/{tag}", admin(set_pool))
    app.router.add_post("/admin/tokens", admin(create_token))
    app.router.add_post("/admin/tokens/revoke", admin(revoke_token))
    app.router.add_post("/admin/instances/{instance}/transfer", admin(transfer))
    app.router.add_get("/", page)
    return app


def tls_context(settings: SsmSettings, ca: CertificateAuthority) -> ssl.SSLContext:
    # The wall clock, not the simulated skew: clock_offset is for the protocol's clock_skew check,
    # which a client could never reach if the server certificate itself were not yet valid.
    cert, key = ca.issue_server(settings.state_dir, settings.hostnames, time.time())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def serve(settings: SsmSettings) -> None:
    ca = CertificateAuthority.load(settings.state_dir)
    state = State(settings.state_dir)
    app = build_app(settings, state, ca, admin_token(settings.state_dir))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen, settings.port, ssl_context=tls_context(settings, ca))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        state.close()
        raise ServeError(f"cannot listen on {settings.listen}:{settings.port}: {exc.strerror}") from None
    port = runner.addresses[0][1]
    host = settings.listen if ":" not in settings.listen else f"[{settings.listen}]"
    # One line on stdout the lab (and the tests) read to learn the port when port = 0.
    print(f"meter ssm: serving https://{host}:{port}{BASE} (time_factor {settings.time_factor:g}, "
          f"clock_offset {settings.clock_offset:+g} s)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        state.close()
