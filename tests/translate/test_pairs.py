"""The pair table (wire/pairs.py): complete, consistent with the code it names, and the README's
table of caller dialect x upstream kind is made from it."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import pytest

from modelroute_sidecar.config import ProviderKeyConfig, ProviderKind, from_data
from modelroute_sidecar.providers import adapter_class
from modelroute_sidecar.wire import pairs
from modelroute_sidecar.wire.base import Dialect

ROOT = Path(__file__).resolve().parents[2]
WIRE = ROOT / "sidecar" / "modelroute_sidecar" / "wire"

# How the README names each caller dialect (the clients that speak it).
CALLERS = {"openai-chat": "Chat Completions", "openai-responses": "Responses (Codex)",
           "anthropic-messages": "Messages (Claude Code)", "gemini": "Gemini (gemini-cli, google-genai)"}
CELLS = {pairs.PASS: "pass", pairs.TRANSLATE: "tr", pairs.BRIDGE: "pass or bridged", pairs.BY_MODEL: "by model"}
# BY_MODEL cells: a model of the kind that speaks the dialect, and one that does not.
BY_MODEL = {"bedrock": ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "amazon.nova-pro-v1:0"),
            "vertex": ("claude-sonnet-4-5@20250929", "gemini-2.5-flash")}
BODIES: dict[str, dict[str, typing.Any]] = {
    "openai-chat": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "openai-responses": {"model": "m", "input": "hi"},
    "anthropic-messages": {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    "gemini": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
}


def readme_table() -> str:
    """The README's table, as the pair table says it must read."""
    kinds = list(pairs.KINDS)
    lines = ["| caller (`wire/…/caller.py`) \\ upstream kind (`wire/…/upstream.py`) | "
             + " | ".join(f"{k} (`{pairs.KINDS[k].wire}`)" for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for dialect, package in pairs.DIALECTS.items():
        cells = [CELLS[pairs.path(dialect, k)] for k in kinds]
        lines.append(f"| {CALLERS[dialect]} (`{package}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_readme_table_is_the_pair_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme_table() in readme, "README's dialect x kind table differs from wire/pairs.py:\n" + readme_table()


def test_every_configurable_kind_has_a_row_and_every_row_a_kind() -> None:
    assert set(pairs.KINDS) == set(typing.get_args(ProviderKind))
    assert len(pairs.PATHS) == len(pairs.KINDS) * len(pairs.DIALECTS)


@pytest.mark.parametrize("kind", list(pairs.KINDS))
def test_a_row_names_an_adapter_of_its_kind_and_a_wire_format_with_an_upstream_side(kind: str) -> None:
    cls = adapter_class(kind)
    assert cls.kind == kind
    for wire in pairs.KINDS[kind].wire.split("+"):
        upstream = importlib.import_module(f"modelroute_sidecar.wire.{wire}.upstream")
        assert hasattr(upstream, "error_info") or hasattr(upstream, "openai_error_info")


@pytest.mark.parametrize(("dialect", "package"), list(pairs.DIALECTS.items()))
def test_a_dialect_lives_in_the_package_the_table_names(dialect: str, package: str) -> None:
    caller = importlib.import_module(f"modelroute_sidecar.wire.{package}.caller")
    names = {v.name for v in vars(caller).values()
             if isinstance(v, type) and issubclass(v, Dialect) and v is not Dialect}
    assert names == {dialect}
    assert (WIRE / package / "validation.py").exists()  # the format's request models, in one place


@pytest.mark.parametrize(("dialect", "kind"), list(pairs.PATHS))
def test_a_pass_through_cell_is_one_the_adapter_can_send(dialect: str, kind: str) -> None:
    pk = from_data({"name": "k", "provider": kind, "baseURL": "http://upstream.test/v1", "project": "my-project"},
                   ProviderKeyConfig)
    adapter = adapter_class(kind)(pk)
    if pairs.path(dialect, kind) is pairs.TRANSLATE:
        assert not pairs.passes(dialect, adapter)
        return
    model = "upstream-model"
    if pairs.path(dialect, kind) is pairs.BY_MODEL:
        speaking, other = BY_MODEL[kind]
        model = speaking if dialect == "anthropic-messages" else other
        assert not pairs.passes(dialect, adapter, other if model == speaking else speaking)
    assert pairs.passes(dialect, adapter, model)
    prepared = adapter.native(dialect, BODIES[dialect], model, False)
    assert prepared.url.startswith("http://upstream.test/")
    if pairs.path(dialect, kind) is pairs.BRIDGE:
        adapter.bridge_responses()  # no Responses API there: translated from now on
        assert not pairs.passes(dialect, adapter)


def test_a_claude_code_request_on_a_gemini_route_is_translated_by_two_files() -> None:
    assert pairs.path("anthropic-messages", "gemini") is pairs.TRANSLATE
    assert pairs.via("anthropic-messages", "gemini") == (
        "translated: `wire/anthropic/caller.py` → canonical → `wire/gemini/upstream.py`")
    for f in ("anthropic/caller.py", "gemini/upstream.py"):
        assert (WIRE / f).exists()
