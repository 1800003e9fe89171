"""`[cluster]` settings: built from TOML by meter.config, bad values stop start-up with a clear message."""

import dataclasses
import typing

import pytest

from meter import config as cfg
from meter.cluster.settings import ClusterSettings, redact
from meter.licensing.pool import PEER_TIMEOUT_SECONDS


def build(table):
    return cfg.build(ClusterSettings, table, source="meter.toml", where="cluster")


def test_defaults_keep_the_pool_in_memory():
    settings = build({})
    assert settings.store == "memory" and settings.name == "meter"
    assert settings.sync_interval == 1.0 and settings.peer_timeout == PEER_TIMEOUT_SECONDS


def test_a_redis_cluster_table_builds():
    settings = build({"store": "redis", "redis_url": "redis://:pw@127.0.0.1:6380/3", "name": "lab-1",
                      "sync_interval": 2, "peer_timeout": 30})
    assert settings.store == "redis" and settings.sync_interval == 2.0 and settings.peer_timeout == 30.0
    assert isinstance(settings.sync_interval, float)


def test_only_config_loader_types_and_every_field_documented():
    """meter.config maps str/int/float/bool/list[str]/Literal only, and every setting carries its docstring."""
    import ast
    import inspect

    from meter.cluster import settings as module

    hints = typing.get_type_hints(ClusterSettings)
    for f in dataclasses.fields(ClusterSettings):
        hint = hints[f.name]
        assert hint in (str, int, float, bool, list[str]) or typing.get_origin(hint) is typing.Literal
    body = ast.parse(inspect.getsource(module)).body
    cls = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == "ClusterSettings")
    documented = {
        stmt.target.id for stmt, after in zip(cls.body, cls.body[1:])
        if isinstance(stmt, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
    }
    assert documented == {f.name for f in dataclasses.fields(ClusterSettings)}


@pytest.mark.parametrize("table, expected", [
    ({"store": "etcd"}, "[cluster] store: expected one of 'memory', 'redis', got \"etcd\""),
    ({"redis_url": "http://127.0.0.1:6379"}, "redis_url: expected a redis://, rediss:// or unix:// URL"),
    ({"redis_url": "redis://127.0.0.1:99999/0"}, "redis_url: not a valid URL"),
    ({"redis_url": "redis://:6379/0"}, "redis_url: expected a host"),
    ({"redis_url": "redis://127.0.0.1:6379/zero"}, "redis_url: the path is a database number"),
    ({"redis_url": "unix://relative.sock"}, "unix:// needs an absolute socket path"),
    ({"name": "lab one"}, "name: expected 1-64 letters"),
    ({"name": "lab:1"}, "name: expected 1-64 letters"),
    ({"name": ""}, "name: expected 1-64 letters"),
    ({"sync_interval": 0}, "sync_interval: expected at least 0.1 seconds"),
    ({"sync_interval": float("nan")}, "sync_interval: expected at least 0.1 seconds"),
    ({"sync_interval": 5.0, "peer_timeout": 10.0}, "peer_timeout: expected at least 3 x sync_interval (15 s)"),
    ({"peer_timeout": 14 * 24 * 3600.0}, "peer_timeout: expected less than P2's 14-day grace"),
    ({"peer_timeout": "60"}, "[cluster] peer_timeout: expected a number"),
    ({"redis": "redis://x"}, "[cluster] unknown key 'redis'"),
])
def test_bad_values_name_the_key_and_what_was_expected(table, expected):
    with pytest.raises(cfg.ConfigError) as err:
        build(table)
    assert expected in str(err.value) and str(err.value).startswith("meter.toml: ")


def test_errors_and_logs_never_show_the_redis_password():
    with pytest.raises(cfg.ConfigError) as err:
        build({"redis_url": "redis://user:hunter2@127.0.0.1:6379/db"})
    assert "hunter2" not in str(err.value) and "user:***@127.0.0.1" in str(err.value)
    assert redact("unix:///run/redis.sock?db=0&password=hunter2") == "unix:///run/redis.sock?db=0&password=***"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
