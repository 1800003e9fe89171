"""Config validation: a bad file stops start-up naming the file, the key and what was expected."""

import pytest

from meter import config as cfg
from meter.cli import main


def test_embedded_default_loads_with_defaults():
    config = cfg.load(None)
    assert config.node.role == "C"
    assert config.licensing.enforcement == "observe"
    assert config.sip.port == 5060
    assert "embedded" in config.source


def test_every_default_key_is_documented_in_the_shipped_file():
    # The shipped meter.toml is the config reference: each setting appears there, commented or not.
    text = cfg.embedded_default_text()
    for name, section in cfg.load(None).sections.items():
        if isinstance(section, list):  # [[zones]]: documented by its example
            assert f"[[{name}]]" in text
            continue
        assert f"[{name}]" in text
        for key in vars(section):
            assert key in text, f"[{name}] {key} is not described in config/meter.toml"


@pytest.mark.parametrize(
    "toml, expected",
    [
        ("[node]\nrole = 'X'\n", "[node] role: expected one of 'C', 'E', got \"X\""),
        ("[sip]\nport = '5o60'\n", "[sip] port: expected an integer, got \"5o60\""),
        ("[sip]\nprot = 5060\n", "[sip] unknown key 'prot'"),
        ("[sipp]\nport = 5060\n", "unknown section [sipp]"),
        ("[log]\njson = 'yes'\n", "[log] json: expected true or false"),
        ("[node\n", "not valid TOML"),
        # issue 11: several SIP workers serve UDP only, each naming its own port
        ("[sip]\nworkers = 2\n", "[sip] workers: 2 workers serve UDP only: set tcp = false"),
        ("[sip]\nworkers = 2\ntcp = false\nadvertised_port = 5070\n", "[sip] workers: each worker names its own port"),
        ("[sip]\nworkers = 65\ntcp = false\n", "[sip] workers: expected 0 (one per core) or 1..64, got 65"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path, toml, expected):
    path = tmp_path / "meter.toml"
    path.write_text(toml)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load(tmp_path / "absent.toml")


def test_run_refuses_to_start_on_bad_config(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[admin]\nport = true\n")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not starting" in err and "[admin] port: expected an integer, got True" in err


def test_the_lab_compose_config_is_valid():
    """The node's config inline in deploy/lab/compose.yaml, with the address compose puts in."""
    import re
    from pathlib import Path

    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "lab" / "compose.yaml").read_text())
    text = compose["configs"]["meter-toml"]["content"]
    text = re.sub(r"\$\{METER_ADVERTISED_HOST:\?[^}]*\}", "192.0.2.10", text)
    config = cfg.parse(text, source="compose.yaml meter-toml")
    assert config.sip.mode == "inline" and config.cluster.store == "redis"
    assert config.sip.advertised_host == "192.0.2.10" and config.node.state_dir == "/var/lib/meter"
    assert {"source": "meter-toml", "target": "/etc/meter/meter.toml"} in compose["services"]["meter"]["configs"]
