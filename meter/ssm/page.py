"""The lab admin's page (``GET /``): accounts, pools with in-use and compliance, instances and
tokens, rendered on the server from ``State.overview`` into ``page.html`` (package data). No
script and nothing fetched from anywhere; token values are shown only by their first characters.
"""

from __future__ import annotations

import datetime
from html import escape
from importlib import resources
from string import Template

TOKEN_SHOWN = 8


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: list[str], rows: list[tuple[str, list[str]]], empty: str) -> str:
    """``rows``: (row id, cells)."""
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(f'<tr id="{escape(row_id)}">' + "".join(cells) + "</tr>" for row_id, cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object, css: str = "") -> str:
    attribute = f' class="{escape(css)}"' if css else ""
    return f"<td{attribute}>{escape(str(value))}</td>"


def render_page(overview: dict) -> str:
    pools = []
    for account in overview["accounts"]:
        for tag, pool in account["pools"].items():
            ends = "-" if pool["end_at"] is None else _when(pool["end_at"]) + (" (ended)" if pool["ended"] else "")
            pools.append((f"pool-{account['virtual_account']}-{tag}", [
                _cell(account["smart_account"]), _cell(account["virtual_account"]), _cell(tag),
                _cell(pool["purchased"]), _cell(ends, "expired" if pool["ended"] else ""),
                _cell(pool["quantity"]), _cell(pool["in_use"]), _cell(pool["available"]),
                _cell(pool["status"].replace("_", " "), pool["status"])]))
    instances = [(f"instance-{i['instance_id']}", [_cell(i["instance_id"]), _cell(i["hostname"]), _cell(i["serial"]), _cell(i["virtual_account"]),
                  _cell(_when(i["last_contact"])), _cell(_when(i["usage_reported_at"])),
                  _cell(", ".join(f"{tag} {count}" for tag, count in i["usage"].items()) or "none"),
                  _cell(i["authorization"].replace("_", " "), i["authorization"]),
                  _cell(_when(i["id_cert_expires_at"]))]) for i in overview["instances"]]
    tokens = [(f"token-{t['token'][:TOKEN_SHOWN]}", [_cell(t["token"][:TOKEN_SHOWN] + "…"), _cell(t["virtual_account"]), _cell(_when(t["expires_at"])),
               _cell(f"{t['uses']}/{t['max_uses'] if t['max_uses'] is not None else '∞'}"),
               _cell("yes" if t["export_controlled"] else "no"), _cell(t["status"].replace("_", " "), t["status"])])
              for t in overview["tokens"]]
    template = Template(resources.files("meter.ssm").joinpath("page.html").read_text(encoding="utf-8"))
    return template.substitute(
        at=escape(_when(overview["at"])), time_factor=escape(f"{overview['time_factor']:g}"),
        clock_offset=escape(f"{overview['clock_offset']:+g}"),
        accounts=_table(["smart account", "virtual account", "tag", "purchased", "ends", "valid", "in use",
                         "available", "compliance"], pools, "No account yet: meter ssm account add SA VA"),
        instances=_table(["instance", "hostname", "serial", "virtual account", "last contact", "usage reported",
                          "usage", "authorization", "ID cert expires"], instances, "No product instance registered."),
        tokens=_table(["token", "virtual account", "expires", "uses", "export controlled", "status"], tokens,
                      "No token: meter ssm token create VA"))
