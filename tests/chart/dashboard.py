"""The Grafana dashboard's queries, as Grafana would send them to Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tests.chart.chart import DASHBOARD

# Grafana's built-in variables (durations it computes from the time range and scrape interval).
BUILTIN = re.compile(r"\$\{?(__rate_interval|__interval|__range)\}?")
VARIABLE = re.compile(r"\$\{([a-zA-Z_][a-zA-Z0-9_]*)\}|\$([a-zA-Z_][a-zA-Z0-9_]*)")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return out


def queries(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, expr, legendFormat) of every panel target."""
    return [(f"panel {p['title']!r} target {t['refId']}", t["expr"], t.get("legendFormat", ""))
            for p in panels(d) for t in p.get("targets", [])]


def variable_queries(d: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", q))
    return out


def expand(expr: str, variables: Mapping[str, str], durations: Mapping[str, str]) -> str:
    """`expr` with Grafana's variables replaced, as Grafana sends it: `variables` are the
    dashboard's (a value, or a template variable's allValue such as `.*`), `durations`
    the built-in ones (`__rate_interval`, `__interval`, `__range`). An unknown one is an error."""
    def builtin(m: re.Match[str]) -> str:
        return durations[m.group(1)]

    def variable(m: re.Match[str]) -> str:
        return variables[m.group(1) or m.group(2)]

    return VARIABLE.sub(variable, BUILTIN.sub(builtin, expr))
