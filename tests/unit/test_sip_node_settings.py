"""[sip] settings: defaults, TOML building through meter.config, and the checks types cannot make."""

import dataclasses

import pytest

from meter import config as cfg
from meter.sip.settings import SipSettings


def test_defaults_are_rfc3261_timers_and_port_5060():
    s = SipSettings()
    assert (s.host, s.port, s.udp, s.tcp, s.mode) == ("0.0.0.0", 5060, True, True, "standalone")
    assert (s.t1, s.t2, s.t4) == (0.5, 4.0, 5.0)  # RFC 3261 §17.1.1.1, §17.1.2.2
    assert (s.min_expires, s.max_expires, s.default_expires) == (60, 3600, 3600)
    assert (s.session_expires, s.min_se) == (1800, 90)  # RFC 4028 §4 recommended interval, §5 floor


def test_every_field_is_a_plain_documented_type():
    # meter.config builds SipSettings generically from TOML: only plain field types are allowed.
    import inspect
    import typing

    source = inspect.getsource(SipSettings)
    for f in dataclasses.fields(SipSettings):
        hint = typing.get_type_hints(SipSettings)[f.name]
        assert hint in (str, int, float, bool, list[str]) or typing.get_origin(hint) is typing.Literal, f.name
        assert f'{f.name}:' in source and '"""' in source.split(f"    {f.name}:", 1)[1].split("\n", 2)[1], f.name


def test_built_from_toml_table():
    s = cfg.build(SipSettings, {"port": 5070, "mode": "inline", "upstream": "127.0.0.1:5080", "t1": 0.1,
                                "aliases": ["meter.lab"]}, source="t.toml", where="sip")
    assert s.port == 5070 and s.upstream_hostport == ("127.0.0.1", 5080) and s.t1 == 0.1
    assert s.aliases == ["meter.lab"]


@pytest.mark.parametrize("table, expected", [
    ({"mode": "inline"}, "upstream"),
    ({"upstream": "nohost"}, "upstream"),
    ({"host": "example.com"}, "host"),
    ({"min_expires": 7200}, "min_expires"),
    ({"udp": False, "tcp": False}, "both false"),
    ({"t1": 0}, "t1"),
    ({"t1": 5.0}, "t2"),
    ({"port": 70000}, "port"),
    ({"min_se": 60}, "min_se"),  # RFC 4028 §5: no Min-SE under 90 s
    ({"session_expires": 60}, "session_expires"),
])
def test_bad_values_name_the_key(table, expected):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.build(SipSettings, table, source="t.toml", where="sip")
    assert "t.toml" in str(info.value) and expected in str(info.value)
