"""Schemathesis against a running node's own OpenAPI document (/api/v1/openapi.json, issue 12 item 4):
with the bearer token and without, it must find no 5xx and no response that breaks the document
(status codes, content types, headers, bodies), nor an operation that ignores the token.

`positive_data_acceptance` is left out: a schema-valid option key text is still refused by the
verifier (a random string is no signed key), which is the API doing its job, and a cursor only
means something when the API handed it out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.peers import REPO, MeterProcess

pytestmark = pytest.mark.integration

ST = Path(sys.executable).with_name("st")
EXCLUDED = "positive_data_acceptance"


@pytest.fixture
def node(tmp_path):
    meter = MeterProcess(tmp_path / "node", licensing={"enforcement": "enforce"})
    meter.install_keys({"ROOM": 7, "RMS": 3})
    meter.start()
    yield meter
    assert meter.stop() == 0, meter.log_tail()


def schemathesis(node: MeterProcess, report: Path, *headers: str) -> subprocess.CompletedProcess:
    assert ST.exists() or shutil.which("st"), "schemathesis' st is not installed (pip install -e .[test])"
    args = [str(ST if ST.exists() else shutil.which("st")), "run", node.url("/api/v1/openapi.json"),
            "--checks", "all", "--exclude-checks", EXCLUDED, "--max-examples", "25", "--seed", "12",
            "--workers", "1", "--phases", "examples,coverage,fuzzing,stateful", "--request-timeout", "10",
            "--report", "junit", "--report-junit-path", str(report)]
    for header in headers:
        args += ["--header", header]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no-token"])
def test_schemathesis_finds_no_server_error_and_no_response_outside_the_document(node, tmp_path, with_token):
    token = (node.state_dir / "admin-token").read_text().strip()
    headers = [f"Authorization: Bearer {token}"] if with_token else []
    result = schemathesis(node, tmp_path / "junit.xml", *headers)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "15 selected / 15 total" in output and "generated" in output, output[-3000:]
    assert "Traceback" not in node.log_path.read_text(), node.log_tail(60)  # no handler failed
