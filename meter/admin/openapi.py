"""The OpenAPI 3.1 document of the admin API v1, written by hand (served at /api/v1/openapi.json).

tests/unit/test_openapi.py keeps it and the routes of ``meter.admin.api`` in step: every route is
documented here and every path here is routed. Route modules added beside the API (``OPENAPI_PATHS``
of ``meter.admin.smart_api``) are merged in by ``document``.
"""

from __future__ import annotations

import copy

from meter import __version__

NUMBER_OR_NULL = {"type": ["number", "null"]}
STRING_OR_NULL = {"type": ["string", "null"]}
LICENSES = ["rms", "room", "desktop", "cmr"]


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _obj(properties: dict, required: list[str] | None = None, **extra) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            **extra}


def _get(summary: str, schema: dict, *, errors: tuple[int, ...] = (), parameters: list | None = None,
         tag: str = "node") -> dict:
    responses = {"200": _ok(schema), "401": {"$ref": "#/components/responses/Unauthorized"}}
    for status in errors:
        responses[str(status)] = _error(ERRORS[status])
    op = {"summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        op["parameters"] = parameters
    return op


ERRORS = {400: "Bad request: the reason is in `error`", 404: "No such resource", 409: "Not available on this node",
          413: "Body too large"}

PAGE_PARAMETERS = [
    {"name": "limit", "in": "query", "required": False, "description": "records per page (default `[admin] page_size`)",
     "schema": {"type": "integer", "minimum": 1}},
    {"name": "after", "in": "query", "required": False, "description": "the `next` cursor of the previous page",
     "schema": {"type": "string", "pattern": "^[^:]+:"}},
    {"name": "q", "in": "query", "required": False, "description": "keep records mentioning this text",
     "schema": {"type": "string"}},
]


def _page_of(item_ref: str) -> dict:
    return _obj({"items": {"type": "array", "items": {"$ref": item_ref}}, "next": STRING_OR_NULL,
                 "total": {"type": "integer", "minimum": 0}})


SCHEMAS = {
    "Error": _obj({"error": {"type": "string"}}),
    "Status": _obj({"node": {"type": "string"}, "role": {"type": "string"}, "mode": {"enum": ["pak", "smart"]},
                    "enforcement": {"enum": ["enforce", "observe"]}, "version": {"type": "string"},
                    "uptime": {"type": "number"}, "banner": STRING_OR_NULL}),
    "Registration": _obj({"alias": {"type": "string"}, "protocol": {"type": "string"},
                          "device_class": {"type": "string"}, "license": {"type": "string"},
                          "device": {"type": "string"}, "rules": {"type": "array", "items": {"type": "string"}},
                          "pending": {"type": "boolean"}, "contact": {"type": "string"},
                          "user_agent": {"type": "string"}, "expires": {"type": ["integer", "null"]}},
                         required=["alias", "protocol", "device_class", "license", "device", "rules"]),
    "Call": _obj({"call_id": {"type": "string"}, "protocol": {"type": "string"}, "caller": {"type": "string"},
                  "callee": {"type": "string"}, "state": {"type": "string"}, "call_class": {"type": "string"},
                  "license": {"type": "string"}, "units": {"type": "number"}, "licenses": {"type": "number"},
                  "charged_on": {"type": "string"}, "caller_zone": {"type": "string"},
                  "callee_zone": {"type": "string"}, "rules": {"type": "array", "items": {"type": "string"}},
                  "started_at": NUMBER_OR_NULL, "duration": NUMBER_OR_NULL},
                 required=["call_id", "protocol", "caller", "callee", "license", "units", "licenses", "charged_on",
                           "rules"]),
    "Alarm": _obj({"id": {"type": "string"}, "rule": {"type": "string"}, "severity": {"type": "string"},
                   "text": {"type": "string"}, "raised_at": {"type": "number"}, "cleared_at": NUMBER_OR_NULL},
                  required=["id", "rule", "severity", "text", "raised_at", "cleared_at"]),
    "OptionKey": _obj({"index": {"type": "integer"}, "key": {"type": "string"}, "option": {"type": "string"},
                       "title": {"type": "string"}, "quantity": {"type": "integer"},
                       "features": {"type": "array", "items": {"type": "string"}}, "valid_until": NUMBER_OR_NULL,
                       "status": {"type": "string", "description": "active, restart_required (K3), "
                                  "added_not_processed (K4), expired (K5), masked, invalid, no_effect_smart (L3)"},
                       "detail": {"type": "string"}, "key_id": {"type": "string"}},
                      required=["index", "key", "features", "valid_until", "status"]),
    "Rule": _obj({"id": {"type": "string"}, "text": {"type": "string"}, "summary": {"type": "string"},
                  "status": {"type": "string"}}, required=["id", "text"]),
    "Bucket": _obj({"at": {"type": "number"}, "max": {"type": "number"}, "min": {"type": "number"},
                    "refusals": {"type": "integer"}}, required=["at", "max"]),
    "LicenseUsage": _obj({"current": {"type": "number"}, "peak": {"type": "number"}, "peak_at": NUMBER_OR_NULL,
                          "capacity": {"type": "integer"}}, required=["current", "peak", "capacity"]),
    "Usage": _obj({"at": {"type": "number"}, "node": {"type": "string"},
                   "licenses": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/LicenseUsage"}},
                   "calls_by_class": {"type": "object"},
                   "peers": {"type": "array", "items": _obj({"node": {"type": "string"}, "alive": {"type": "boolean"},
                                                             "licenses": {"type": "object"}})},
                   "cluster": {"type": "object"}}, required=["licenses", "peers", "cluster"]),
}

PATHS = {
    "/api/v1/status": {"get": _get("The node: name, role, license mode, enforcement, version, uptime, banner",
                                   {"$ref": "#/components/schemas/Status"})},
    "/api/v1/licenses": {"get": _get("The ledger snapshot: pools, calls, registrations, refusals, alarms",
                                     {"type": "object"}, tag="licensing")},
    "/api/v1/usage": {"get": _get("Current and peak use of each license type, per peer and cluster (P1)",
                                  {"$ref": "#/components/schemas/Usage"}, errors=(409,), tag="usage")},
    "/api/v1/usage/history": {"get": _get(
        "Per-bucket maximum, minimum and refusals of one license type", _obj({
            "license": {"enum": LICENSES}, "step": {"type": "integer"}, "from": {"type": "number"},
            "to": {"type": "number"}, "capacity": {"type": "integer"},
            "buckets": {"type": "array", "items": {"$ref": "#/components/schemas/Bucket"}}}),
        errors=(400, 409), tag="usage", parameters=[
            {"name": "license", "in": "query", "required": False, "schema": {"enum": LICENSES}},
            {"name": "from", "in": "query", "required": False, "schema": {"type": "number"}},
            {"name": "to", "in": "query", "required": False, "schema": {"type": "number"}},
            {"name": "step", "in": "query", "required": False, "schema": {"enum": [60, 3600, 86400]}}])},
    "/api/v1/usage/reset-peaks": {"post": {
        "summary": "Start the peaks over (an operator's command, logged)", "tags": ["usage"],
        "security": [{"bearer": []}],
        "responses": {"200": _ok(_obj({"reset_at": {"type": "number"}})),
                      "401": {"$ref": "#/components/responses/Unauthorized"}, "409": _error(ERRORS[409])}}},
    "/api/v1/registrations": {"get": _get("Registrations, one page (R1-R11)",
                                          _page_of("#/components/schemas/Registration"), errors=(400,),
                                          parameters=PAGE_PARAMETERS, tag="listings")},
    "/api/v1/calls": {"get": _get("Calls, one page, with their license and units (C1-C11)",
                                  _page_of("#/components/schemas/Call"), errors=(400,), parameters=PAGE_PARAMETERS,
                                  tag="listings")},
    "/api/v1/alarms": {"get": _get("Alarms raised and cleared, newest first (P4, K3...)",
                                   _obj({"items": {"type": "array", "items": {"$ref": "#/components/schemas/Alarm"}}}))},
    "/api/v1/option-keys": {
        "get": _get("Installed option keys with validity and features, serial, peers' licenses (K6)", _obj({
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/OptionKey"}},
            "serial": {"type": "string"}, "peers": {"type": "array"}}, required=["items", "serial", "peers"]),
            errors=(409,), tag="option keys"),
        "post": {
            "summary": "Add an option key at the next free index (K1, K4: a 65th, 66th key is listed, not processed)",
            "tags": ["option keys"], "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                {"key": {"type": "string", "minLength": 1},
                 # xConfiguration Option [1..64] Key: write this index, replacing its key (K4)
                 "index": {"type": "integer", "minimum": 1, "maximum": 64}}, required=["key"])}}},
            "responses": {
                "201": _ok({"allOf": [{"$ref": "#/components/schemas/OptionKey"},
                                      _obj({"warnings": {"type": "array", "items": {"type": "string"}}})]},
                           "Installed"),
                "400": _error("Refused by the verifier: forged, altered, expired, other_serial, duplicate..."),
                "401": {"$ref": "#/components/responses/Unauthorized"}, "409": _error(ERRORS[409]),
                "413": _error(ERRORS[413])}},
    },
    "/api/v1/option-keys/{index}": {"delete": {
        "summary": "Remove the key at an index", "tags": ["option keys"], "security": [{"bearer": []}],
        "parameters": [{"name": "index", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
        "responses": {"204": {"description": "Removed"}, "401": {"$ref": "#/components/responses/Unauthorized"},
                      "404": _error(ERRORS[404]), "409": _error(ERRORS[409])}}},
    "/api/v1/rules": {"get": _get("Every licensing rule of docs/licensing-rules.md",
                                  _obj({"items": {"type": "array", "items": {"$ref": "#/components/schemas/Rule"}}}),
                                  tag="rules")},
    "/api/v1/rules/{id}": {"get": _get("One licensing rule", {"$ref": "#/components/schemas/Rule"}, errors=(404,),
                                       tag="rules", parameters=[{"name": "id", "in": "path", "required": True,
                                                                 "schema": {"type": "string"}}])},
    "/api/v1/cluster": {"get": _get("The cluster store's state (Redis or memory)", {"type": "object"})},
    "/api/v1/sip": {"get": _get("SIP counters", {"type": "object"})},
    "/api/v1/openapi.json": {"get": {"summary": "This document", "tags": ["node"], "security": [],
                                     "responses": {"200": _ok({"type": "object"})}}},
}


def document(extra_paths: list[dict] = (), *, max_page_size: int | None = None) -> dict:
    """The whole document; ``extra_paths``: the ``OPENAPI_PATHS`` of added route modules;
    ``max_page_size``: this node's `[admin] max_page_size`, the listings' largest ``limit``."""
    paths = copy.deepcopy(PATHS)
    if max_page_size is not None:
        for listing in ("/api/v1/registrations", "/api/v1/calls"):
            limit = next(p for p in paths[listing]["get"]["parameters"] if p["name"] == "limit")
            limit["schema"]["maximum"] = max_page_size
    for fragment in extra_paths:
        paths.update(copy.deepcopy(fragment))
    return {
        "openapi": "3.1.0",
        "info": {"title": "meter admin API", "version": __version__,
                 "description": "State changes need `Authorization: Bearer <token>` (METER_ADMIN_TOKEN or "
                                "<state_dir>/admin-token); reads need it when `[admin] protect_reads` is set or "
                                "the server listens beyond loopback. Errors are `{\"error\": reason}`."},
        "servers": [{"url": "/"}],
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Unauthorized": {
                "description": "The bearer token is missing or wrong (RFC 6750)",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    }
