"""`meter report`: the sizing report from a node's usage history, offline and read-only.

    meter report [--from WHEN] [--to WHEN] [--format text|csv|json|html] [--config PATH | --state-dir DIR]

It reads the per-minute buckets of ``meter.store.usage_history`` in the state directory the
config names (the node may be running: SQLite WAL lets it read beside the writer) and never
creates or changes anything there. Per license type:

- peak: the highest concurrent use, with the start of its minute. "Use" is the cluster's: this
  node's value plus its peers' last published values (``meter.licensing.usage``), which on a single
  node is the node's own. The pool (P1) is the cluster's, so this is what the licenses must carry.
- p95, p99: time-weighted percentiles of the buckets' maxima: each minute bucket (hourly, for data
  older than ``[usage] fine_days``) weighs the time it covers; minutes with no record (node down)
  do not count. Over the maxima, so a percentile is an upper bound of the use at that rank.
- hours above capacity: the time covered by buckets whose maximum exceeds the installed capacity
  (the pool's capacity at the last record, P1).
- refusals (enforce) and would-be refusals (observe), and the licenses needed to carry the
  traffic with no refusal: the peak rounded up (RMS: an audio-only SIP call is half a license, C4);
  when charges were refused, the demand refused was never carried, so the need is at least one
  more than the capacity it met, and the report says it is a lower bound.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import math
import sys
import time

from meter.store.usage_history import DAY, HOUR, MINUTE, UsageHistory
from meter.timestamps import iso_timestamp

LICENSES = ("rms", "room", "desktop", "cmr")
TITLES = {"rms": "RMS", "room": "room", "desktop": "desktop", "cmr": "CMR"}
FORMATS = ("text", "csv", "json", "html")
PERCENTILE_DEFINITION = (
    "p95/p99: time-weighted percentiles of the per-minute maxima of concurrent use (hourly maxima for "
    "data older than [usage] fine_days), each bucket weighted by the time it covers; minutes with no "
    "record (node down) are not counted")
USE_DEFINITION = "use: this node plus its cluster peers' last published values (the pool's use, P1)"
# Plots keep at most about this many points: minute grain up to 1.5 days, hourly up to 90 days.
_PLOT_STEPS = ((1.5 * DAY, MINUTE), (90 * DAY, HOUR))


def build_report(history: UsageHistory, capacities: dict[str, int], start: float, end: float) -> dict:
    """The report's numbers for [start, end): per license, and the plain answer."""
    span = end - start
    plot_step = next((step for limit, step in _PLOT_STEPS if span <= limit), DAY)
    licenses = {}
    for lic in LICENSES:
        rows = history.buckets(lic, start, end, MINUTE)
        capacity = int(capacities.get(lic, 0))
        licenses[lic] = _license_report(rows, capacity)
        licenses[lic]["series"] = [{"at": b["at"], "max": b["cluster_max"]}
                                   for b in history.buckets(lic, start, end, plot_step)]
    need = {lic: licenses[lic]["need"] for lic in LICENSES}
    return {"from": start, "to": end, "generated_at": time.time(), "plot_step": plot_step,
            "definitions": {"use": USE_DEFINITION, "percentiles": PERCENTILE_DEFINITION},
            "licenses": licenses, "need": need, "answer": _answer(licenses)}


def _license_report(rows: list[dict], capacity: int) -> dict:
    seconds = sum(r["seconds"] for r in rows)
    peak_row = max(rows, key=lambda r: r["cluster_max"], default=None)
    peak = peak_row["cluster_max"] if peak_row else 0.0
    refusals = sum(r["refusals"] for r in rows)
    would = sum(r["would_refuse"] for r in rows)
    above = sum(r["seconds"] for r in rows if r["cluster_max"] > capacity)
    need, lower_bound = math.ceil(peak), False
    if refusals:  # refused demand was never carried: it needed more than the capacity it met
        refused_at = max(r["capacity"] for r in rows if r["refusals"])
        need, lower_bound = max(need, refused_at + 1), True
    return {
        "capacity": capacity, "peak": peak, "peak_at": peak_row["at"] if peak else None,
        "node_peak": max((r["max"] for r in rows), default=0.0),
        "p95": weighted_percentile(rows, 0.95), "p99": weighted_percentile(rows, 0.99),
        "hours_above_capacity": above / 3600.0, "hours_recorded": seconds / 3600.0,
        "refusals": refusals, "would_refuse": would, "need": need, "need_is_lower_bound": lower_bound,
    }


def weighted_percentile(rows: list[dict], fraction: float) -> float:
    """The smallest bucket maximum at or below which ``fraction`` of the recorded time lies."""
    pairs = sorted((r["cluster_max"], r["seconds"]) for r in rows)
    total = sum(weight for _, weight in pairs)
    if not total:
        return 0.0
    covered = 0.0
    for value, weight in pairs:
        covered += weight
        if covered >= fraction * total - 1e-9:
            return value
    return pairs[-1][0]


def _answer(licenses: dict) -> str:
    parts = [f"{TITLES[lic]} >= {licenses[lic]['need']}" for lic in ("rms", "room", "desktop")]
    if licenses["cmr"]["need"]:
        parts.append(f"CMR >= {licenses['cmr']['need']}")
    text = "to carry this traffic with no refusal you need " + ", ".join(parts)
    bounded = [TITLES[lic] for lic in LICENSES if licenses[lic]["need_is_lower_bound"]]
    if bounded:
        text += f" (at least: {', '.join(bounded)} had refusals, whose demand was never carried)"
    return text


# ---- renderers -------------------------------------------------------------------------------

def render(report: dict, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")
    return {"text": _text, "csv": _csv, "json": _json, "html": _html}[fmt](report)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _n(value: float) -> str:
    return f"{value:g}"


_COLUMNS = ("license", "capacity", "peak", "peak_at", "p95", "p99", "hours_above_capacity", "refusals",
            "would_refuse", "need")


def _text(report: dict) -> str:
    out = [f"usage report {_when(report['from'])} .. {_when(report['to'])}",
           f"{'license':<8} {'capacity':>8} {'peak':>6} {'peak at':>20} {'p95':>6} {'p99':>6} "
           f"{'h>cap':>7} {'refused':>8} {'would':>6} {'need':>5}"]
    for lic, r in report["licenses"].items():
        out.append(f"{lic:<8} {r['capacity']:>8} {_n(r['peak']):>6} {_when(r['peak_at']):>20} {_n(r['p95']):>6} "
                   f"{_n(r['p99']):>6} {r['hours_above_capacity']:>7.2f} {r['refusals']:>8} "
                   f"{r['would_refuse']:>6} {r['need']:>5}")
    out += ["", report["definitions"]["use"], report["definitions"]["percentiles"],
            "RMS in licenses: an audio-only SIP call is 0.5 (C4)", "", report["answer"]]
    return "\n".join(out) + "\n"


def _csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_COLUMNS)
    for lic, r in report["licenses"].items():
        writer.writerow([lic, r["capacity"], _n(r["peak"]),
                         "" if r["peak_at"] is None else _iso(r["peak_at"]), _n(r["p95"]), _n(r["p99"]),
                         f"{r['hours_above_capacity']:.4f}", r["refusals"], r["would_refuse"], r["need"]])
    return buffer.getvalue()


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _json(report: dict) -> str:
    return json.dumps(report, indent=2) + "\n"


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.answer { font-size: 1.2em; font-weight: bold; margin: 1em 0; }
.note { color: #555; font-size: 0.9em; }
svg { border: 1px solid #ddd; background: #fafafa; margin: 0.5em 0 1.5em; }
.use { fill: none; stroke: #1f6feb; stroke-width: 1.5; }
.capacity { stroke: #d1242f; stroke-width: 1.5; stroke-dasharray: 6 4; }
.axis { stroke: #888; }
text { font-size: 11px; fill: #444; }
"""
_W, _H, _PAD = 720, 200, 40


def _svg(lic: str, r: dict, start: float, end: float) -> str:
    series, capacity = r["series"], r["capacity"]
    top = max([capacity, r["peak"], 1.0])
    span = max(end - start, 1.0)

    def x(at: float) -> float:
        return _PAD + (at - start) / span * (_W - 2 * _PAD)

    def y(value: float) -> float:
        return _H - _PAD + 10 - value / top * (_H - _PAD - 10)

    points = " ".join(f"{x(p['at']):.1f},{y(p['max']):.1f}" for p in series)
    parts = [f'<svg width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" '
             f'aria-label="{html.escape(lic)} use over time">',
             f'<line class="axis" x1="{_PAD}" y1="{y(0):.1f}" x2="{_W - _PAD}" y2="{y(0):.1f}"/>',
             f'<line class="axis" x1="{_PAD}" y1="{y(0):.1f}" x2="{_PAD}" y2="{y(top):.1f}"/>',
             f'<text x="4" y="{y(top) + 4:.1f}">{_n(top)}</text><text x="4" y="{y(0) + 4:.1f}">0</text>',
             f'<text x="{_PAD}" y="{_H - 8}">{html.escape(_when(start))}</text>',
             f'<text x="{_W - _PAD}" y="{_H - 8}" text-anchor="end">{html.escape(_when(end))}</text>',
             f'<line class="capacity" x1="{_PAD}" y1="{y(capacity):.1f}" x2="{_W - _PAD}" y2="{y(capacity):.1f}">'
             f'<title>capacity {capacity}</title></line>']
    if points:
        parts.append(f'<polyline class="use" points="{points}"><title>{html.escape(lic)} use</title></polyline>')
    parts.append("</svg>")
    return "".join(parts)


def _html(report: dict) -> str:
    esc = html.escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in (
            lic, r["capacity"], _n(r["peak"]), _when(r["peak_at"]), _n(r["p95"]), _n(r["p99"]),
            f"{r['hours_above_capacity']:.2f}", r["refusals"], r["would_refuse"], r["need"])) + "</tr>"
        for lic, r in report["licenses"].items())
    head = "".join(f"<th>{esc(c)}</th>" for c in ("license", "capacity", "peak", "peak at", "p95", "p99",
                                                   "hours above capacity", "refused", "would refuse", "need"))
    plots = "".join(f"<h2>{esc(TITLES[lic])}</h2>" + _svg(lic, r, report["from"], report["to"])
                    for lic, r in report["licenses"].items())
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>meter usage report</title><style>{_CSS}</style></head><body>"
            f"<h1>Usage report {esc(_when(report['from']))} .. {esc(_when(report['to']))}</h1>"
            f"<p class=\"answer\">{esc(report['answer'])}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            f"<p class=\"note\">{esc(report['definitions']['use'])}. {esc(report['definitions']['percentiles'])}. "
            f"RMS in licenses: an audio-only SIP call is 0.5 (C4). The dashed red line is the installed "
            f"capacity; the blue line the highest use in each plotted bucket.</p>"
            f"{plots}</body></html>\n")


# ---- the command -------------------------------------------------------------------------------

def add_commands(subparsers) -> None:
    from meter.admin.state_cli import _where

    report = subparsers.add_parser("report", help="license usage and sizing report from the state directory "
                                                  "(offline, read-only)")
    report.add_argument("--from", dest="start", help="start: YYYY-MM-DD[THH:MM] (UTC) or epoch seconds "
                                                     "(default: the first record)")
    report.add_argument("--to", dest="end", help="end (exclusive), same forms (default: now)")
    report.add_argument("--format", default="text", choices=FORMATS, help="output format (default: text)")
    _where(report)
    report.set_defaults(func=cmd_report)


def parse_when(text: str) -> float:
    """Epoch seconds, or an ISO 8601 date or date-time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return iso_timestamp(text)
    except ValueError:
        raise ValueError(f"expected YYYY-MM-DD[THH:MM[:SS]] or epoch seconds, got {text!r}") from None


def cmd_report(args) -> int:
    from meter.admin.state_cli import state_dir_of
    from meter.store.licensing import StoreError

    try:
        state_dir = state_dir_of(args)
        if not state_dir.is_dir():
            raise StoreError(f"{state_dir}: no such state directory (the node has never run here?)")
        end = parse_when(args.end) if args.end else time.time()
        with UsageHistory(state_dir, readonly=True) as history:
            span = history.span()
            start = parse_when(args.start) if args.start else (span[0] if span else end - DAY)
            if start >= end:
                raise ValueError(f"--from ({_when(start)}) must be before --to ({_when(end)})")
            report = build_report(history, history.latest_capacities(), start, end)
    except (StoreError, ValueError) as exc:
        print(f"meter: report: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(report, args.format))
    return 0
