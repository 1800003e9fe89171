"""The shipped Prometheus config and alert rules pass Prometheus's own checker and rule tests."""

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
pytestmark = pytest.mark.integration


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: install Debian's prometheus package (make test does)"
    return subprocess.run([exe, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)


def test_alert_rules_are_valid():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    rules = (DEPLOY / "alerts.yml").read_text().count("- alert:")
    assert rules >= 7 and f"SUCCESS: {rules} rules found" in result.stdout  # every rule loaded


def test_alert_rules_fire_as_intended():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_rule_has_a_promtool_case():
    """Each rule in alerts.yml is named by at least one case of alerts_test.yml (firing or quiet)."""
    import re

    rules = set(re.findall(r"- alert: (\w+)", (DEPLOY / "alerts.yml").read_text()))
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "alerts_test.yml").read_text()))
    assert rules and rules <= tested, f"no promtool case for {sorted(rules - tested)}"
