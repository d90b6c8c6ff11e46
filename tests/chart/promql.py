"""Just enough PromQL to know which metrics (and which of their labels) an expression uses.

A small tokenizer, not a regular expression over the text: strings, label matchers and
range brackets are tokens of their own, so a label value such as "gpt-4o" or a duration
such as [5m] is never mistaken for a metric name; an identifier followed by "(" is a
function or an aggregation; the words after `by`, `without`, `on`, `ignoring`,
`group_left` and `group_right` are label names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Grafana's variables that stand for durations; the others only occur inside strings.
GRAFANA_DURATIONS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<matchers>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^{}"'])*\})
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:0x[0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+)(?:ms|s|m|h|d|w|y)*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>[()\,])
  | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>@=])
""", re.VERBOSE)

_MATCHER = re.compile(
    r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)\s*,?""")


class PromQLError(ValueError):
    pass


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str] = frozenset()  # label names in its matchers


@dataclass
class Usage:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # label names in by/without/on/ignoring/group_*

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors}


def tokenize(expr: str) -> list[tuple[str, str]]:
    text = GRAFANA_DURATIONS.sub("5m", expr)
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PromQLError(f"cannot tokenize {text[pos:pos + 20]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append((kind, m.group()))
        pos = m.end()
    return tokens


def matcher_labels(block: str) -> dict[str, str]:
    """{label: value} of a `{...}` block (values unquoted, operators dropped)."""
    inner = block[1:-1]
    out: dict[str, str] = {}
    pos = 0
    while pos < len(inner):
        if not inner[pos:].strip():
            break
        m = _MATCHER.match(inner, pos)
        if m is None:
            raise PromQLError(f"bad label matchers {block!r}")
        out[m.group(1)] = m.group(3)[1:-1]
        pos = m.end()
    return out


def parse(expr: str) -> Usage:
    tokens = tokenize(expr)
    usage = Usage()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text in GROUPING:
            if nxt == ("punct", "("):
                j = i + 2
                while j < len(tokens) and tokens[j] != ("punct", ")"):
                    if tokens[j][0] == "ident":
                        usage.grouping.add(tokens[j][1])
                    elif tokens[j] != ("punct", ","):
                        raise PromQLError(f"unexpected {tokens[j][1]!r} in {text}(...) of {expr!r}")
                    j += 1
                i = j + 1
                continue
            i += 1  # group_left without labels
            continue
        if kind == "ident" and nxt == ("punct", "("):
            i += 1  # a function or an aggregation
            continue
        if kind == "ident" and text.lower() in KEYWORDS | AGGREGATIONS:
            i += 1
            continue
        if kind == "ident":
            labels: frozenset[str] = frozenset()
            if nxt[0] == "matchers":
                labels = frozenset(matcher_labels(nxt[1]))
                i += 1
            usage.selectors.append(Selector(text, labels))
        elif kind == "matchers":  # {__name__="..."} without a metric name in front
            found = matcher_labels(text)
            if "__name__" not in found:
                raise PromQLError(f"selector without a metric name in {expr!r}")
            usage.selectors.append(Selector(found["__name__"], frozenset(found) - {"__name__"}))
        i += 1
    return usage


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$")


def parse_grafana_query(query: str) -> Usage:
    """A Grafana template variable query: `label_values(selector, label)` or plain PromQL."""
    m = _LABEL_VALUES.match(query)
    if m is None:
        return parse(query)
    usage = parse(m.group("selector"))
    usage.grouping.add(m.group("label"))
    return usage


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def family(metric: str) -> str:
    """The metric family a sample name belongs to: histogram and counter suffixes removed."""
    for suffix in (*HISTOGRAM_SUFFIXES, "_total"):
        if metric.endswith(suffix):
            return metric[: -len(suffix)]
    return metric
