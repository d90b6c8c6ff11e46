"""Request shapes: TypedDicts checked without pydantic when the request is good.

Each wire format declares its caller requests once, as TypedDicts (``validation.py``).
A good request, nearly every request, is parsed with orjson and checked against them by
:func:`checker`, a plain-Python walk compiled from the same annotations. Anything the walk
does not accept goes to pydantic (strict TypedDict validation, imported on the first such
request), which decides and words the 400 exactly as before. So the walk needs only to be
no more lenient than pydantic and to give what pydantic would give for what it accepts; it
never words an error. The sidecar then never loads pydantic (about 10 MiB and 0.1 s of
start-up in every pod) unless a caller sends a bad request.

What the walk leaves to pydantic, besides any type mismatch: a body orjson refuses (not
JSON, NaN, 1e999, lone surrogates), nesting deeper than pydantic-core's JSON parser takes,
and a run of 19 or more digits anywhere (an integer that may not fit 64 bits, which orjson
would turn into a float).
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, NotRequired, Required, Union, get_args, get_origin

import orjson
from typing_extensions import is_typeddict

# The strict TypedDict config every request shape uses (pydantic reads it from
# ``__pydantic_config__``; a plain dict, so declaring a shape does not import pydantic): a
# wrong JSON type is refused, never coerced; fields the gateway does not know pass through.
OPEN: dict[str, Any] = {"extra": "allow", "strict": True, "allow_inf_nan": False}

# pydantic-core's JSON parser refuses nesting beyond 200 levels; the walk leaves anything
# near that to it.
_DEPTH = 180
# Digits kept, everything else a space: a run of 19 is then a plain substring search, ten
# times quicker than a regular expression over the body.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_LONG_RUN = b"0" * 19


class Tagged:
    """``Annotated[Union[...], Tagged(choices, tag)]``: the member ``choices[tag(value)]``.

    For pydantic, the same union with ``Tag``/``Discriminator`` (built when pydantic asks,
    so declaring it costs nothing); for the walk, a dict look-up.
    """

    def __init__(self, choices: dict[str, Any], tag: Callable[[Any], str]) -> None:
        self.choices = choices
        self.tag = tag

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic import Discriminator, Tag

        members = tuple(Annotated[t, Tag(name)] for name, t in self.choices.items())
        return handler.generate_schema(Annotated[Union[(*members,)], Discriminator(self.tag)])


def tagged(choices: dict[str, Any], tag: Callable[[Any], str]) -> Any:
    """The annotation of a union chosen by ``tag`` (see :class:`Tagged`)."""
    return Annotated[Union[(*choices.values(),)], Tagged(choices, tag)]


class _Refused(Exception):
    """The walk does not accept the value (pydantic will say whether, and why)."""


_REFUSED = _Refused()
Check = Callable[[Any], Any]  # the value as pydantic would give it, or raises _Refused


def _refuse(_: Any) -> Any:
    raise _REFUSED


def _any(v: Any) -> Any:
    return v


def _str(v: Any) -> Any:
    if type(v) is not str:
        raise _REFUSED
    return v


def _int(v: Any) -> Any:
    if type(v) is not int:  # bool is no int to strict pydantic
        raise _REFUSED
    return v


def _bool(v: Any) -> Any:
    if type(v) is not bool:
        raise _REFUSED
    return v


def _float(v: Any) -> Any:
    t = type(v)
    if t is float:
        return v  # finite: orjson parsed it
    if t is int:
        return float(v)  # as strict pydantic does
    raise _REFUSED


def _none(v: Any) -> Any:
    if v is not None:
        raise _REFUSED
    return v


_SCALARS: dict[Any, Check] = {str: _str, int: _int, bool: _bool, float: _float, type(None): _none, None: _none,
                              Any: _any, object: _any}


def checker(tp: Any) -> Check:
    """The walk for annotation ``tp`` (a request shape)."""
    return _compile(tp, {})


def _compile(tp: Any, seen: dict[Any, Check]) -> Check:
    if tp in _SCALARS:
        return _SCALARS[tp]
    origin = get_origin(tp)
    if origin in (Required, NotRequired):
        return _compile(get_args(tp)[0], seen)
    if origin is Annotated:
        base, *meta = get_args(tp)
        tags = [m for m in meta if isinstance(m, Tagged)]
        if len(tags) != len(meta) or len(tags) > 1:
            return _refuse  # a constraint the walk does not know: pydantic judges
        if not tags:
            return _compile(base, seen)
        return _tagged_check(tags[0], seen)
    if origin is Literal:
        values = get_args(tp)
        allowed = {(type(v), v) for v in values}
        kinds = {type(v) for v in values}  # hashable: str, int, bool, None

        def literal(v: Any) -> Any:
            if type(v) not in kinds or (type(v), v) not in allowed:
                raise _REFUSED
            return v

        return literal
    if origin in (Union, types.UnionType):
        # pydantic's smart union keeps an int an int when the union has int: try int first.
        args = sorted(get_args(tp), key=lambda a: a is not int)
        return _union([_compile(a, seen) for a in args])
    if origin is list:
        return _list(_compile(get_args(tp)[0], seen))
    if origin is dict:
        key, value = get_args(tp)
        if key is not str:
            return _refuse
        return _dict(_compile(value, seen))
    if is_typeddict(tp):
        return _typeddict(tp, seen)
    return _refuse  # anything else: pydantic judges


def _union(members: list[Check]) -> Check:
    def union(v: Any) -> Any:
        for m in members:  # members never change ``v`` in place: a refused one leaves no trace
            try:
                return m(v)
            except _Refused:
                continue
        raise _REFUSED

    return union


def _list(item: Check) -> Check:
    if item is _any:
        def any_list(v: Any) -> Any:
            if type(v) is not list:
                raise _REFUSED
            return v

        return any_list

    def checked_list(v: Any) -> Any:
        if type(v) is not list:
            raise _REFUSED
        out = None
        for i, x in enumerate(v):
            y = item(x)
            if y is not x:
                if out is None:
                    out = list(v)
                out[i] = y
        return v if out is None else out

    return checked_list


def _dict(value: Check) -> Check:
    def checked_dict(v: Any) -> Any:
        if type(v) is not dict:
            raise _REFUSED
        if value is _any:
            return v
        out = None
        for k, x in v.items():
            y = value(x)
            if y is not x:
                if out is None:
                    out = dict(v)
                out[k] = y
        return v if out is None else out

    return checked_dict


def _tagged_check(t: Tagged, seen: dict[Any, Check]) -> Check:
    choices = {name: _compile(tp, seen) for name, tp in t.choices.items()}
    tag = t.tag

    def by_tag(v: Any) -> Any:
        c = choices.get(tag(v))
        if c is None:
            raise _REFUSED
        return c(v)

    return by_tag


def _typeddict(tp: Any, seen: dict[Any, Check]) -> Check:
    if tp in seen:
        return lambda v: seen[tp](v)  # a recursive shape: the check of its own, once compiled
    config = getattr(tp, "__pydantic_config__", {})
    extras = config.get("extra") == "allow"
    seen[tp] = _refuse
    hints = typing.get_type_hints(tp, include_extras=True)
    fields = {name: _compile(hint, seen) for name, hint in hints.items()}
    # From the hints, not ``__required_keys__``: with postponed annotations, typing_extensions
    # cannot see a NotRequired in a subclass's string annotations (pydantic reads the hints).
    total = getattr(tp, "__total__", True)
    required = frozenset(name for name, hint in hints.items()
                         if get_origin(hint) is Required or (total and get_origin(hint) is not NotRequired))
    get = fields.get

    def typed_dict(v: Any) -> Any:
        if type(v) is not dict or not required <= v.keys():
            raise _REFUSED
        out = None
        for name, x in v.items():  # the request's keys: usually fewer than the shape's
            check = get(name)
            if check is None:
                if not extras:
                    raise _REFUSED  # pydantic would drop or refuse it
                continue
            y = check(x)
            if y is not x:
                if out is None:
                    out = dict(v)
                out[name] = y
        return v if out is None else out

    seen[tp] = typed_dict
    return typed_dict


def _depth(v: Any, limit: int) -> bool:
    """Whether ``v`` nests deeper than ``limit`` levels."""
    stack = [(v, 1)]
    while stack:
        x, d = stack.pop()
        if d > limit:
            return True
        if type(x) is dict:
            stack.extend((y, d + 1) for y in x.values() if type(y) in (dict, list))
        elif type(x) is list:
            stack.extend((y, d + 1) for y in x if type(y) in (dict, list))
    return False


class Shape:
    """A request shape: :meth:`fast` for the walk, :attr:`adapter` for pydantic's verdict."""

    def __init__(self, tp: Any) -> None:
        self.type = tp
        self._check = checker(tp)

    def fast(self, body: bytes) -> dict[str, Any] | None:
        """The request, when the walk accepts it; None: ask :attr:`adapter`."""
        if _LONG_RUN in body.translate(_DIGITS_ONLY):
            return None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(parsed) is not dict:
            return None
        if body.count(b"[") + body.count(b"{") > _DEPTH and _depth(parsed, _DEPTH):
            return None
        try:
            out: dict[str, Any] = self._check(parsed)
        except _Refused:
            return None
        return out

    @functools.cached_property
    def adapter(self) -> Any:
        from pydantic import TypeAdapter  # only for requests the walk did not accept

        return TypeAdapter(self.type)
