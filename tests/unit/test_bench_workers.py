"""``python -m bench.run --workers 1,2``: the node's ``[sip] workers`` per table (issue 11, part 4).

No node is started for load here (no timing); the config the benchmark would start a node with
is checked by ``meter check-config`` itself.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from bench import run, scenarios
from bench.scenarios import Context, Plan, node_options, per_workers
from bench.services import node_config


def _ctx(tmp_path, *, workers=(1,), key_known: bool | None = None, **plan) -> Context:
    ctx = Context(plan=Plan(workers=workers, **plan), workdir=tmp_path, log=lambda text: None)
    ctx._workers_key = key_known
    return ctx


def test_n_workers_are_written_into_sip_with_tcp_off(tmp_path):
    ctx = _ctx(tmp_path, key_known=True, node_options={"sip": {"max_expires": 7200}})
    ctx.workers = 2
    assert node_options(ctx)["sip"] == {"max_expires": 7200, "workers": 2, "tcp": False}  # UDP only when N > 1
    ctx.workers = 1
    assert node_options(ctx)["sip"] == {"max_expires": 7200, "workers": 1}
    assert ctx.plan.node_options == {"sip": {"max_expires": 7200}}  # the plan's own options untouched


def test_one_worker_on_a_node_without_the_key_is_the_node_as_it_is(tmp_path):
    ctx = _ctx(tmp_path, key_known=False)
    assert "workers" not in node_options(ctx).get("sip", {})
    ctx.workers = 2
    assert node_options(ctx)["sip"] == {"workers": 2, "tcp": False}  # asked for: the node will say no


def test_the_config_for_one_worker_is_accepted_by_this_node(tmp_path):
    """Whether or not this tree knows ``[sip] workers`` yet, ``--workers 1`` starts a node."""
    ctx = _ctx(tmp_path)
    options = node_options(ctx)
    known = ctx._workers_key
    assert isinstance(known, bool)
    path = tmp_path / "meter.toml"
    path.write_text(node_config(tmp_path, 5999, 5998, options=options))
    sip = tomllib.loads(path.read_text())["sip"]
    assert sip.get("workers") == (1 if known else None)
    check = subprocess.run([sys.executable, "-m", "meter", "check-config", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_per_workers_runs_the_scenario_once_per_count_and_titles_each_table(tmp_path):
    seen = []

    def avalanche(ctx):
        seen.append(ctx.workers)
        return "### Registration avalanche\n\nbody\n"

    ctx = _ctx(tmp_path, workers=(1, 2), key_known=True)
    text = per_workers(avalanche)(ctx)
    assert seen == [1, 2]
    assert "### Registration avalanche, 1 worker (`[sip] workers = 1`)\n" in text
    assert "### Registration avalanche, 2 workers (`[sip] workers = 2`, `tcp = false`)\n" in text
    assert ctx.workers == 1  # what runs next (memory, RAS) gets the plain node


def test_per_workers_skips_n_workers_on_a_node_without_the_key(tmp_path):
    seen = []

    def openloop(ctx):
        seen.append(ctx.workers)
        return "### Open-loop latency\n\nbody\n"

    text = per_workers(openloop)(_ctx(tmp_path, workers=(1, 2), key_known=False))
    assert seen == [1]  # the Kamailio paths are not run for a table the node cannot take part in
    assert "### Open-loop latency, 2 workers\n\nnot measured" in text


def test_a_node_that_cannot_start_with_n_workers_is_reported_for_n_only(tmp_path):
    def avalanche(ctx):
        if ctx.workers == 2:
            ctx.unavailable["b"] = "refused"
        return f"### Registration avalanche\n\n{sorted(ctx.unavailable)}\n"

    ctx = _ctx(tmp_path, workers=(1, 2, 1), key_known=True)
    text = per_workers(avalanche)(ctx)
    assert text.count("['b']") == 1  # the second 1-worker table still measures (b)
    assert ctx.unavailable == {}


def test_the_workers_option_reaches_the_plan():
    args = run.build_parser().parse_args(["--workers", "1,2", "--codecs", "compiled"])
    plan = run.plan_from(args)
    assert plan.workers == (1, 2) and plan.codecs == ("compiled",)
    assert run.plan_from(run.build_parser().parse_args([])).workers == (1,)
    with pytest.raises(SystemExit):
        run.plan_from(run.build_parser().parse_args(["--workers", "0"]))
    older = run.plan_from(run.build_parser().parse_args(["--node-option", "sip.workers=2"]))
    assert older.workers == (2,) and "workers" not in older.node_options.get("sip", {})


def test_make_bench_records_every_issue_11_table_by_default():
    assert {"hotpath", "scrape", "avalanche", "openloop", "calls", "memory"} <= set(run.DEFAULT_SCENARIOS)
    plan = run.plan_from(run.build_parser().parse_args([]))
    assert plan.codecs == ("python", "compiled")
    assert plan.scale_registrations == (500, 5000, 50000)
    assert plan.call_concurrent == 500 and 400 in plan.call_rates and plan.call_registrations == 5000
    assert 50000 in plan.memory_stages
    assert set(plan.paths) == set(scenarios.PATHS)
