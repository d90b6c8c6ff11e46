"""The pydantic-free walk over request shapes agrees with pydantic wherever it answers.

Each wire format checks a caller's request with a plain-Python walk compiled from its
TypedDicts and asks pydantic only about what the walk does not accept (wire/shapes.py). For
that to change nothing, every body the walk accepts must be one pydantic accepts, giving the
very same value (same keys, and the same types: 1.0 where pydantic makes a float of 1). Tried
on every good body of the ingress fuzzer's templates, which the walk must accept (or pydantic
would load for ordinary traffic), and on 20,000 of its mutated and damaged bodies.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from modelroute_sidecar.wire.anthropic import validation as anthropic
from modelroute_sidecar.wire.gemini import validation as gemini
from modelroute_sidecar.wire.gemini.caller import _camel_body
from modelroute_sidecar.wire.openai_chat import validation as chat
from modelroute_sidecar.wire.openai_responses import validation as responses
from modelroute_sidecar.wire.shapes import Shape
from tests.gateway import fuzzgen

SHAPES: dict[str, Shape] = {
    fuzzgen.CHAT: chat.CHAT_REQUEST, fuzzgen.EMBEDDINGS: chat.EMBEDDINGS_REQUEST,
    fuzzgen.MESSAGES: anthropic.MESSAGES_REQUEST, fuzzgen.COUNT_TOKENS: anthropic.COUNT_TOKENS_REQUEST,
    fuzzgen.RESPONSES: responses.RESPONSES_REQUEST, fuzzgen.GEMINI: gemini.GENERATE_REQUEST,
    fuzzgen.GEMINI_STREAM: gemini.GENERATE_REQUEST, fuzzgen.GEMINI_COUNT: gemini.COUNT_TOKENS_REQUEST,
}


def shape_of(path: str) -> tuple[Shape, bool]:
    """The shape of an endpoint (its model filled in or not), and whether its body is
    camelCased first (Gemini's)."""
    if path.startswith("/v1beta/models/"):
        return SHAPES["/v1beta/models/{model}:" + path.split(":", 1)[1]], True
    return SHAPES[path], False


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)  # 1 and 1.0 differ here, not under ==


def pydantic_verdict(shape: Shape, body: bytes) -> Any:
    from pydantic import ValidationError

    try:
        return shape.adapter.validate_json(body)
    except ValidationError:
        return None


def test_every_good_template_passes_the_walk_as_pydantic_has_it() -> None:
    seen = 0
    for model in fuzzgen.MODELS:
        for path, bodies in fuzzgen._templates(model).items():
            shape, camel = shape_of(path)
            for body in bodies:
                raw = orjson.dumps(body)
                raw = _camel_body(raw) if camel else raw
                fast = shape.fast(raw)
                assert fast is not None, (path, body)
                assert canonical(fast) == canonical(pydantic_verdict(shape, raw)), (path, body)
                seen += 1
    assert seen >= 40


@pytest.mark.parametrize("seed", range(4))
def test_what_the_walk_accepts_pydantic_accepts_the_same(seed: int) -> None:
    gen = fuzzgen.Generator(seed)
    accepted = refused_by_walk = 0
    for _ in range(5000):
        req = gen.next()
        shape, camel = shape_of(req.path)
        raw = _camel_body(req.body) if camel else req.body
        fast = shape.fast(raw)
        if fast is None:
            refused_by_walk += 1
            continue
        accepted += 1
        slow = pydantic_verdict(shape, raw)
        assert slow is not None, (req.path, req.mutations, raw[:300])
        assert canonical(fast) == canonical(slow), (req.path, req.mutations, raw[:300])
    assert accepted > 500 and refused_by_walk > 500  # both sides of the walk were tried


def test_the_walk_leaves_deep_nesting_and_long_numbers_to_pydantic() -> None:
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat.CHAT_REQUEST.fast(orjson.dumps(good)) is not None

    def nested(depth: int) -> bytes:
        return orjson.dumps(good)[:-1] + b',"metadata":{"a":' + b"[" * depth + b"]" * depth + b"}}"

    assert chat.CHAT_REQUEST.fast(nested(150)) is not None
    # pydantic-core takes 199 levels here and refuses 200; the walk leaves both to it.
    assert chat.CHAT_REQUEST.fast(nested(199)) is None and pydantic_verdict(chat.CHAT_REQUEST, nested(199)) is not None
    assert chat.CHAT_REQUEST.fast(nested(200)) is None and pydantic_verdict(chat.CHAT_REQUEST, nested(200)) is None
    big = orjson.dumps(good)[:-1] + b',"metadata":{"n":123456789012345678901}}'
    assert chat.CHAT_REQUEST.fast(big) is None
    assert chat.CHAT_REQUEST.fast(orjson.dumps({**good, "temperature": 1}))["temperature"] == 1.0  # type: ignore[index]
