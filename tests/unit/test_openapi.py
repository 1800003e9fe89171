"""The OpenAPI 3.1 document of the admin API (/api/v1/openapi.json) and the routes stay in step
(issue 12 item 4): every /api/v1 route is documented and every documented path is routed."""

from __future__ import annotations

import re
from types import SimpleNamespace

from meter.admin import api, openapi
from meter.admin.http import Access
from meter.config import AdminSettings


def routed() -> set[tuple[str, str]]:
    node = SimpleNamespace(metering=None, config=SimpleNamespace(admin=AdminSettings()), sip=None, pool_sync=None)
    app = api.build_app(node, Access("t"))
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical
        if route.method in ("GET", "POST", "PUT", "DELETE", "PATCH") and path.startswith("/api/v1/"):
            out.add((route.method.lower(), re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)))
    return out


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item
            if method in ("get", "post", "put", "delete", "patch")}


def test_every_v1_route_is_documented_and_every_documented_path_is_routed():
    assert routed() == documented(openapi.document())


def test_the_document_is_openapi_3_1_with_the_bearer_scheme_and_every_ref_resolves():
    doc = openapi.document()
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    text = repr(doc)
    for ref in set(re.findall(r"'#/components/(\w+)/(\w+)'", text)):
        assert ref[1] in doc["components"][ref[0]], ref
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            if method != "get":  # state changes: the token, always (contract B)
                assert op["security"] == [{"bearer": []}] and "401" in op["responses"], (method, path)


def test_an_added_route_module_is_merged_into_the_document():
    """The `smart` branch's OPENAPI_PATHS join the document by one line (api.EXTENSIONS)."""
    extra = {"/api/v1/smart": {"get": {"summary": "x", "responses": {"200": {"description": "OK"}}}}}
    doc = openapi.document([extra])
    assert "/api/v1/smart" in doc["paths"] and "/api/v1/smart" not in openapi.PATHS
