"""Errors the gateway raises, independent of the dialect they are rendered in.

Each ingress dialect renders a :class:`GatewayError` in its own shape (OpenAI's
``{"error": {...}}`` or Anthropic's ``{"type": "error", ...}``); nothing here knows
about wire formats, so handlers can raise the same error for every caller.
"""

from __future__ import annotations

from typing import Literal

# The OpenAI error types; each dialect maps them to its own vocabulary.
ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
]


class GatewayError(Exception):
    """An error with an HTTP status, meant to be shown to the caller."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: ErrorType = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type: ErrorType = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.message!r}, type={self.type!r}, code={self.code!r})"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def model_not_found(model: str, why: str | None = None) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model}' does not exist or is not routed by this gateway" + (f": {why}" if why else ""),
        type="not_found_error",
        param="model",
        code="model_not_found",
    )


def payload_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body exceeds the limit of {limit} bytes", code="request_too_large")


def upstream_failed(status: int, message: str, type: ErrorType = "api_error", code: str | None = None,
                    headers: dict[str, str] | None = None) -> GatewayError:
    return GatewayError(status, message, type=type, code=code, headers=headers)


def access_denied(model: str, route: str, caller: str | None) -> GatewayError:
    """403: the route exists, but not for this caller. Names both; never a key."""
    who = f"ServiceAccount '{caller}'" if caller is not None else "An anonymous caller"
    return GatewayError(403, f"{who} may not use model '{model}': {route} does not list it in "
                        "allowedServiceAccounts", type="permission_error", param="model", code="access_denied")
