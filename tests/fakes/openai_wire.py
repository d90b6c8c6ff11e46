"""OpenAI wire pieces shared by chat completions, responses, embeddings and Azure.

Error messages follow the ones the OpenAI API really returns, so a gateway that
passes them through (or parses `param`/`code`) is tested against the real text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from .behaviour import IMAGE_TEXT

REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class OpenAIError(Exception):
    """A request the real API would reject: status plus the `error` object fields."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": {"message": message, "type": type, "param": param, "code": code}}


def type_name(value: Any) -> str:
    """How OpenAI names a JSON value's type in 'Invalid type' errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def missing(param: str) -> OpenAIError:
    return OpenAIError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def invalid_type(param: str, expected: str, value: Any) -> OpenAIError:
    return OpenAIError(
        f"Invalid type for '{param}': expected {expected}, but got {type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def invalid_value(param: str, value: Any, supported: Iterable[str]) -> OpenAIError:
    options = [f"'{s}'" for s in supported]
    listed = options[0] if len(options) == 1 else ", ".join(options[:-1]) + f", and {options[-1]}"
    return OpenAIError(f"Invalid value: '{value}'. Supported values are: {listed}.", param=param, code="invalid_value")


def unknown_parameter(name: str) -> OpenAIError:
    return OpenAIError(f"Unrecognized request argument supplied: {name}")


def below_minimum(param: str, minimum: int, value: Any) -> OpenAIError:
    return OpenAIError(
        f"Invalid '{param}': integer below minimum value. Expected a value >= {minimum}, but got {value} instead.",
        param=param,
        code="integer_below_min_value",
    )


def above_maximum(param: str, maximum: int, value: Any) -> OpenAIError:
    return OpenAIError(
        f"Invalid '{param}': integer above maximum value. Expected a value <= {maximum}, but got {value} instead.",
        param=param,
        code="integer_above_max_value",
    )


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise OpenAIError("you must provide a model parameter")
    if not isinstance(model, str):
        raise invalid_type("model", "a string", model)
    return model


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OpenAIError(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
            "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
            "contact us through our help center at help.openai.com.)"
        )
    return body


def typed_objects(items: Any, param: str, allowed: tuple[str, ...] | None = None,
                  ) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(where, object, type) of each item of an array of typed objects, refused as OpenAI refuses."""
    if not isinstance(items, list):
        raise invalid_type(param, "an array of objects", items)
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise invalid_type(where, "an object", item)
        kind = item.get("type")
        if kind is None:
            raise missing(f"{where}.type")
        if allowed is not None and kind not in allowed:
            raise invalid_value(f"{where}.type", kind, allowed)
        yield where, item, kind


def content_text(content: Any, param: str, allowed: tuple[str, ...]) -> str:
    """Text of a chat message's `content` (string or parts); images count as `[image]`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_type(param, "one of a string or array of objects", content)
    texts: list[str] = []
    for where, part, kind in typed_objects(content, param, allowed):
        if kind in ("text", "refusal"):
            value = part.get(kind)
            if not isinstance(value, str):
                raise (
                    missing(f"{where}.{kind}") if value is None else invalid_type(f"{where}.{kind}", "a string", value)
                )
            texts.append(value)
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise missing(f"{where}.image_url.url")
            texts.append(IMAGE_TEXT)
    return " ".join(texts)


def mask_key(key: str) -> str:
    """OpenAI echoes a bad key only partly: 'sk-ab***********wxyz'."""
    if len(key) <= 8:
        return key[:2] + "*" * max(len(key) - 2, 0)
    return key[:5] + "*" * (len(key) - 9) + key[-4:]


def status_error(status: int, message: str | None = None) -> dict[str, Any]:
    """The body the OpenAI API returns for a bare status (used by faults)."""
    table: dict[int, tuple[str, str, str | int | None]] = {
        400: ("Bad request.", "invalid_request_error", None),
        401: (
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        403: ("You are not allowed to access this resource.", "invalid_request_error", None),
        404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
        409: ("The request conflicted with another request.", "invalid_request_error", None),
        429: (
            "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
            "requests",
            "rate_limit_exceeded",
        ),
        500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
        # Cloudflare answers these in front of the API; its code is the bare integer status.
        502: ("Bad gateway.", "cf_bad_gateway", 502),
        503: ("The engine is currently overloaded, please try again later.", "server_error", None),
        504: ("Gateway timeout.", "cf_gateway_timeout", 504),
    }
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    text, kind, code = table.get(status, (f"HTTP {status}", default_type, None))
    return {"error": {"message": message or text, "type": kind, "param": None, "code": code}}
