"""Smart Licensing on the admin server (contract B): ``GET /api/v1/smart`` and the actions of
Expressway's Maintenance > Smart licensing page, plus the page itself at ``/smart``.

``add_routes(app, node)`` adds them; ``OPENAPI_PATHS`` documents them (merged into the OpenAPI
document by ``meter.admin.api``). State changes need the bearer token like every POST
(``meter.admin.http``'s guard). An action the manager refused or could not be reached for
answers 200 with ``"ok": false``, the error and when it is tried again: the request was taken and
the attempt made (S9). A refusal by the rules (PAK mode, S4, not registered) is a 409; a bad body a 400.
"""

from __future__ import annotations

from aiohttp import web

from meter.admin.http import ApiError, json_response, read_json
from meter.admin.page_frame import page_response
from meter.licensing.smart import SmartRefused


def add_routes(app: web.Application, node) -> None:
    routes = SmartRoutes(node)
    r = app.router
    r.add_get("/api/v1/smart", routes.view)
    r.add_post("/api/v1/smart/register", routes.register)
    r.add_post("/api/v1/smart/renew-authorization", routes.action("renew_authorization"))
    r.add_post("/api/v1/smart/renew-registration", routes.action("renew_registration"))
    r.add_post("/api/v1/smart/deregister", routes.action("deregister"))
    r.add_post("/api/v1/smart/update-usage", routes.action("update_usage"))
    r.add_get("/smart", _page)


class SmartRoutes:
    def __init__(self, node) -> None:
        self.node = node

    def _agent(self):
        agent = getattr(self.node, "smart", None)
        if agent is None:
            raise ApiError(409, "Smart Licensing is not running on this node")
        return agent

    async def view(self, request: web.Request) -> web.Response:
        return json_response(self._agent().view())

    async def register(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, 'body: expected {"token": "...", "transport": {...}}')
        token, transport, reregister = body.get("token"), body.get("transport"), body.get("reregister", False)
        if not isinstance(token, str) or not token.strip():
            raise ApiError(400, "token: expected the product-instance registration token (a non-empty string)")
        if transport is not None and not isinstance(transport, dict):
            raise ApiError(400, 'transport: expected {"kind": "direct"|"onprem"|"proxy", ...}')
        if not isinstance(reregister, bool):
            raise ApiError(400, "reregister: expected true or false")
        agent = self._agent()
        outcome = await _run(agent.register(token, transport, reregister=reregister))
        return json_response({**outcome, "smart": agent.view()})

    def action(self, name: str):
        async def handle(request: web.Request) -> web.Response:
            agent = self._agent()
            outcome = await _run(getattr(agent, name)())
            return json_response({**outcome, "smart": agent.view()})
        return handle


async def _run(coro) -> dict:
    try:
        return await coro
    except SmartRefused as exc:
        raise ApiError(409, str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


async def _page(request: web.Request) -> web.Response:
    return page_response("smart.html")


_ERROR = {"description": "Refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_SMART = {"type": "object", "required": ["mode", "registration", "authorization", "evaluation", "usage"],
          "properties": {"mode": {"enum": ["pak", "smart"]}, "registration": {"type": "object"},
                         "authorization": {"type": "object"}, "evaluation": {"type": "object"},
                         "usage": {"type": "array", "items": {"type": "object"}},
                         "notice": {"type": "string"}}}
_OUTCOME = {"type": "object", "required": ["ok", "smart"],
            "properties": {"ok": {"type": "boolean"}, "error": {"type": "string"}, "code": {"type": "string"},
                           "next_attempt": {"type": ["number", "null"]}, "smart": _SMART}}


def _post(summary: str, rules: str, body: dict | None = None) -> dict:
    op = {"summary": summary, "description": f"Rules {rules}. Needs the bearer token.",
          "security": [{"bearer": []}],
          "responses": {"200": {"description": "The attempt and its outcome (`ok` false: the error and the "
                                               "next attempt, S9)",
                                "content": {"application/json": {"schema": _OUTCOME}}},
                        "400": _ERROR, "401": {"$ref": "#/components/responses/Unauthorized"}, "409": _ERROR}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return {"post": op}


OPENAPI_PATHS: dict = {
    "/api/v1/smart": {"get": {
        "summary": "Smart Licensing status: registration, authorization, evaluation, usage per license type",
        "description": "Rules S1-S14, P6.",
        "responses": {"200": {"description": "The Smart licensing page's fields",
                              "content": {"application/json": {"schema": _SMART}}},
                      "401": {"$ref": "#/components/responses/Unauthorized"}, "409": _ERROR}}},
    "/api/v1/smart/register": _post("Register with a product-instance token (S3), choosing the transport (S4)", "S3 S4 S12", {
        "type": "object", "required": ["token"],
        "properties": {"token": {"type": "string", "minLength": 1},
                       "reregister": {"type": "boolean"},
                       "transport": {"type": "object", "properties": {
                           "kind": {"enum": ["direct", "onprem", "proxy"]}, "url": {"type": "string"},
                           "host": {"type": "string"}, "port": {"type": "integer"},
                           "user": {"type": "string"}, "password": {"type": "string"}}}}}),
    "/api/v1/smart/renew-authorization": _post("Renew authorization now", "S7"),
    "/api/v1/smart/renew-registration": _post("Renew registration now (sends the hostname, S14)", "S7 S14"),
    "/api/v1/smart/deregister": _post("Deregister: entitlements back to the virtual account; cleared locally "
                                      "even if the manager cannot be told", "S8"),
    "/api/v1/smart/update-usage": _post("Update usage details now", "S11"),
}
