"""The CLI's admin client against an HTTP server speaking contract B (`/api/v1/...`), and against a
node from before v1 (unversioned `/api/...` only): one place for the URL, the token and the errors.
The real node is asked in tests/integration/test_cli_family.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meter.admin.client import AdminClient, AdminError, NodeUnreachable, read_token
from meter.cli import main

TOKEN = "t0ken"
CALLS = [
    {"call_id": "a", "caller": "sip:alice@lab.test", "callee": "sip:+1@itsp.example", "license": "rms", "units": 1,
     "licenses": 0.5, "charged_on": "c1", "rules": ["C4"]},
    {"call_id": "b", "caller": "sip:bob@lab.test", "callee": "sip:x@partner.example", "license": "none", "units": 0,
     "licenses": 0, "charged_on": "e1", "rules": ["C3"]},
]


class Node(BaseHTTPRequestHandler):
    """v1 when ``server.v1``; otherwise only the unversioned paths, with the old server's 404 text."""

    def log_message(self, *args):
        pass

    def _send(self, status: int, doc=None, text: str | None = None):
        body = (json.dumps(doc) if doc is not None else (text or "")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if doc is not None else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.seen.append(("GET", self.path, self.headers.get("Authorization")))
        v1 = self.server.v1
        if v1 and self.path == "/api/v1/status":
            return self._send(200, {"node": "c1", "role": "C", "mode": "pak"})
        if v1 and self.path == "/api/v1/calls":
            return self._send(200, {"items": CALLS[:1], "next": "k1", "total": 2})
        if v1 and self.path == "/api/v1/calls?after=k1":
            return self._send(200, {"items": CALLS[1:], "next": None, "total": 2})
        if not v1 and self.path == "/api/calls":
            legacy = [{k: v for k, v in c.items() if k not in ("licenses", "charged_on")} for c in CALLS]
            return self._send(200, {"items": legacy, "next": None, "total": 2})
        if not v1 and self.path == "/api/licenses":
            return self._send(200, {"node": "c1", "licenses": {}})
        self._send(404, text=f"no such resource: {self.path}\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.seen.append(("POST", self.path, self.headers.get("Authorization"), body))
        if not self.server.v1:  # the old server on loopback: no token asked, no such route
            return self._send(404, text=f"no such resource: {self.path}\n")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"error": "a bearer token is required"})
        if self.path == "/api/v1/option-keys":
            if body["key"].endswith("="):
                return self._send(400, {"error": "altered: the key was changed after it was issued"})
            return self._send(201, {"index": 66, "status": "added_not_processed"})
        self._send(404, {"error": "not found"})

    def do_DELETE(self):
        self.server.seen.append(("DELETE", self.path, self.headers.get("Authorization")))
        if self.path == "/api/v1/option-keys/7":
            return self._send(404, {"error": "no option key at index 7"})
        self.send_response(204)
        self.end_headers()


@pytest.fixture(params=[True, False], ids=["v1", "unversioned"])
def node(request):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Node)
    server.v1, server.seen = request.param, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_c3_c4_calls_in_licenses_paged_and_charged_on_the_other_node(node, capsys, monkeypatch):
    """C4: RMS as licenses (0.5 audio-only, also worked out from an older node's units); C3: a call
    the other node pays for says so (v1's ``charged_on``)."""
    monkeypatch.delenv("METER_ADMIN_TOKEN", raising=False)
    rows = AdminClient(url(node)).get_all("calls", legacy="calls")
    assert [r["call_id"] for r in rows] == ["a", "b"]
    assert main(["calls", "--admin", url(node), "--json"]) == 0
    listed = {r["call_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["a"]["licenses"] == 0.5 and listed["b"]["licenses"] == 0
    assert main(["calls", "--admin", url(node)]) == 0
    out = capsys.readouterr().out
    b_row = next(line for line in out.splitlines() if line.startswith("b "))
    if node.v1:
        assert "e1 (other node)" in b_row
        assert [p for _, p, *_ in node.seen][:2] == ["/api/v1/calls", "/api/v1/calls?after=k1"]
    else:
        assert "/api/calls" in [p for _, p, *_ in node.seen]
    header = out.splitlines()[0]
    assert header.split()[:3] == ["CALL_ID", "CALLER", "CALLEE"] and "LICENSES" in header


def test_k4_optionkeyadd_through_the_api_with_the_token_from_the_state_directory(node, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("METER_ADMIN_TOKEN", raising=False)
    if not node.v1:
        rc = main(["xcommand", "optionkeyadd", "MTR1-abc", "--admin", url(node)])
        err = capsys.readouterr().err
        assert rc == 1 and "has no POST /api/v1/option-keys" in err and len(err.strip().splitlines()) == 1
        return
    rc = main(["xcommand", "optionkeyadd", "MTR1-abc", "--admin", url(node)])
    err = capsys.readouterr().err
    assert rc == 1 and "wants its admin token" in err and "METER_ADMIN_TOKEN" in err
    (tmp_path / "admin-token").write_text(TOKEN + "\n")
    assert read_token(tmp_path) == TOKEN
    monkeypatch.setenv("METER_ADMIN_TOKEN", TOKEN)
    assert main(["xcommand", "optionkeyadd", "MTR1-abc", "--admin", url(node)]) == 0
    assert "option 66: added (added_not_processed)" in capsys.readouterr().out
    rc = main(["xcommand", "optionkeyadd", "MTR1-abc=", "--admin", url(node)])
    assert rc == 1 and "option key refused: altered" in capsys.readouterr().err
    assert main(["xcommand", "optionkeydelete", "3", "--admin", url(node)]) == 0
    rc = main(["xcommand", "optionkeydelete", "7", "--admin", url(node)])
    assert rc == 1 and "option 7 is not set" in capsys.readouterr().err
    posts = [s for s in node.seen if s[0] == "POST"]
    assert posts[-1][2] == f"Bearer {TOKEN}" and posts[-1][3] == {"key": "MTR1-abc="}


def test_a_node_that_does_not_answer_is_one_line():
    with pytest.raises(NodeUnreachable, match=r"cannot reach the node at http://127.0.0.1:9: "):
        AdminClient("http://127.0.0.1:9").get("status")
    with pytest.raises(AdminError):
        raise AdminError(400, "x")
