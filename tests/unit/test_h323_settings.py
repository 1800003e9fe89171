"""[h323] settings: defaults, TOML building through meter.config, and the checks types cannot make."""

import dataclasses
import inspect
import typing

import pytest

from meter import config as cfg
from meter.h323.settings import H323Settings


def test_defaults_are_ras_port_1719_and_vcs_timers():
    s = H323Settings()
    assert (s.enabled, s.host, s.ras_port, s.mode, s.gatekeeper_id) == (True, "0.0.0.0", 1719, "standalone", "meter")
    assert (s.time_to_live, s.irr_frequency, s.irr_timeout) == (1800, 120, 6.0)  # VCS TimeToLive / CallTimeToLive


def test_every_field_is_a_plain_documented_type():
    # meter.config builds H323Settings generically from TOML: only plain field types are allowed.
    source = inspect.getsource(H323Settings)
    hints = typing.get_type_hints(H323Settings)
    for f in dataclasses.fields(H323Settings):
        hint = hints[f.name]
        assert hint in (str, int, float, bool, list[str]) or typing.get_origin(hint) is typing.Literal, f.name
        assert '"""' in source.split(f"    {f.name}:", 1)[1].split("\n", 2)[1], f"{f.name} has no docstring"


def test_built_from_toml_table():
    s = cfg.build(H323Settings, {"ras_port": 0, "mode": "inline", "upstream": "127.0.0.1:1819", "time_to_live": 60,
                                 "irr_timeout": 2}, source="t.toml", where="h323")
    assert s.upstream_hostport == ("127.0.0.1", 1819) and s.time_to_live == 60 and s.irr_timeout == 2.0


@pytest.mark.parametrize("table, expected", [
    ({"mode": "inline"}, "upstream"),
    ({"upstream": "gk.lab"}, "upstream"),
    ({"host": "gk.lab"}, "host"),
    ({"advertised_host": "gk.lab"}, "advertised_host"),
    ({"ras_port": 70000}, "ras_port"),
    ({"gatekeeper_id": ""}, "gatekeeper_id"),
    ({"gatekeeper_id": "x" * 129}, "gatekeeper_id"),
    ({"time_to_live": 0}, "time_to_live"),
    ({"irr_frequency": 65536}, "irr_frequency"),
    ({"irr_timeout": 0}, "irr_timeout"),
    ({"housekeeping_interval": -1}, "housekeeping_interval"),
    ({"mode": "proxy"}, "mode"),
    ({"ras_port": "1719"}, "ras_port"),
])
def test_bad_values_stop_start_up_naming_the_key(table, expected):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.build(H323Settings, table, source="t.toml", where="h323")
    assert expected in str(err.value) and "t.toml" in str(err.value)
