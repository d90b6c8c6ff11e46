"""Records: immutable classes whose fields are described once, read from JSON data with validation.

A record class lists its fields as annotations (``Annotated[int, Rule(ge=1)] = 3``); the
metaclass turns them into ``__slots__``, a keyword-only ``__init__``, equality, hashing and
a repr. :func:`convert` reads parsed JSON (dicts, lists, scalars) as a record, and
:func:`read_json` JSON text, refusing unknown fields and values against the rules with the
rule and the place (``Expected `int` >= 1 - at `$.routes[...].retries.maxAttempts```).
:func:`to_data` and :func:`dump_json` write a record back; :func:`replace` copies one with
changes. :mod:`.pydantic_schema` reads the same description (:func:`record_fields`) to make
the pydantic models of ``serve`` and the operator.

The sidecar reads its config with this and nothing heavier (see :mod:`.config` for why).
"""

from __future__ import annotations

import functools
import json
import operator
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, Union, dataclass_transform, get_args, get_origin, overload

T = TypeVar("T")
Convert = Callable[[Any], Any]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class ConfigInvalid(ValueError):
    """A value broke the schema, or text that is not JSON: says which rule, and where."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule
        self.where: list[str] = []  # the path's steps, innermost first (added as the error rises)

    def within(self, step: str) -> ConfigInvalid:
        self.where.append(step)
        return self

    @property
    def path(self) -> str:
        return "$" + "".join(reversed(self.where))

    def __str__(self) -> str:
        return f"{self.rule} - at `{self.path}`" if self.where else self.rule


class Rule:
    """Constraints on a value, as in ``Annotated[int, Rule(ge=1, le=20)]``. ``pattern`` is
    searched for (unanchored) with the meaning RE2 and pydantic give it: ``$`` is the very end."""

    __slots__ = ("ge", "gt", "le", "lt", "max_length", "min_length", "pattern")

    def __init__(self, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
                 lt: float | None = None, min_length: int | None = None, max_length: int | None = None,
                 pattern: str | None = None) -> None:
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.min_length, self.max_length, self.pattern = min_length, max_length, pattern

    def given(self) -> dict[str, Any]:
        """The constraints set, by name (pydantic's ``Field`` takes the same names)."""
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}


class Field:
    """One field of a record: its Python name, JSON name, type and default."""

    __slots__ = ("default", "default_factory", "json_name", "name", "type")

    def __init__(self, name: str, json_name: str, type_: Any, default: Any, default_factory: Any) -> None:
        self.name, self.json_name, self.type = name, json_name, type_
        self.default, self.default_factory = default, default_factory

    @property
    def required(self) -> bool:
        return self.default is MISSING and self.default_factory is None


class _FieldSpec:
    __slots__ = ("default", "default_factory", "name")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None, name: str | None) -> None:
        self.default, self.default_factory, self.name = default, default_factory, name


@overload
def field(*, default: T, name: str | None = None) -> T: ...
@overload
def field(*, default_factory: Callable[[], T], name: str | None = None) -> T: ...
@overload
def field(*, name: str | None = None) -> Any: ...
def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | None = None, name: str | None = None) -> Any:
    """A field's default made per instance (``default_factory``), or its JSON ``name`` when not
    the camelCase of its Python name (``baseURL``)."""
    return _FieldSpec(default, default_factory, name)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _values_getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving the tuple of a record's field values (for ==, hash)."""
    if len(names) > 1:
        return operator.attrgetter(*names)  # in C
    return lambda record: tuple(getattr(record, n) for n in names)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class RecordMeta(type):
    """Makes a record class: its annotated names are its fields, stored in slots."""

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> RecordMeta:
        inherited: list[Field] = [f for b in bases for f in getattr(b, "__record_fields__", ())]
        own: list[Field] = []
        for fname, ann in ns.get("__annotations__", {}).items():
            if fname.startswith("__"):
                continue  # the class's own bookkeeping (ClassVar), not a field
            value = ns.pop(fname, MISSING)
            spec = value if isinstance(value, _FieldSpec) else _FieldSpec(value, None, None)
            own.append(Field(fname, spec.name or _camel(fname), ann, spec.default, spec.default_factory))
        ns["__slots__"] = tuple(f.name for f in own)
        cls = super().__new__(mcls, name, bases, ns)
        fields = tuple(inherited + own)
        cls.__record_fields__ = fields  # type: ignore[attr-defined]
        cls.__record_values__ = staticmethod(_values_getter([f.name for f in fields]))  # type: ignore[attr-defined]
        return cls


class Record(metaclass=RecordMeta):
    """Immutable, built with keywords; equal when of one class with equal fields."""

    __record_fields__: typing.ClassVar[tuple[Field, ...]]
    __record_values__: typing.ClassVar[Callable[[Any], tuple[Any, ...]]]

    def __init__(self, **values: Any) -> None:
        setter = object.__setattr__
        used = 0
        for f in self.__record_fields__:
            value = values.get(f.name, MISSING)
            if value is not MISSING:
                used += 1
            elif f.default_factory is not None:
                value = f.default_factory()
            elif f.default is MISSING:
                raise TypeError(f"{type(self).__name__}() missing required argument {f.name!r}")
            else:
                value = f.default
            setter(self, f.name, value)
        if used != len(values):
            names = {f.name for f in self.__record_fields__}
            raise TypeError(f"{type(self).__name__}() got unexpected arguments {sorted(set(values) - names)}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        values = type(self).__record_values__
        return bool(values(self) == values(other))

    def __hash__(self) -> int:
        return hash(type(self).__record_values__(self))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.__record_fields__)
        return f"{type(self).__name__}({inner})"

    def __copy__(self) -> Record:
        return self

    def __deepcopy__(self, memo: Any) -> Record:
        return self  # immutable (its dicts are not to be changed either)


R = TypeVar("R", bound=Record)


def replace(record: R, **changes: Any) -> R:
    """A copy of ``record`` with some fields changed."""
    return type(record)(**{**{f.name: getattr(record, f.name) for f in record.__record_fields__}, **changes})


def record_fields(cls: type[Record]) -> tuple[Field, ...]:
    """The fields of ``cls``, their types resolved (not strings)."""
    fields = cls.__record_fields__
    if any(isinstance(f.type, str) for f in fields):
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in fields:
            f.type = hints[f.name]
    return fields


# --- reading JSON data as a type ----------------------------------------------------------------

_JSON_NAMES = {dict: "object", list: "array", tuple: "array", str: "str", int: "int", float: "float",
               bool: "bool", type(None): "null"}
_FLOAT_MAX = sys.float_info.max


def _got(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _expected(what: str, value: Any) -> ConfigInvalid:
    return ConfigInvalid(f"Expected `{what}`, got `{_got(value)}`")


def _int(value: Any) -> Any:
    if type(value) is int:
        return value
    raise _expected("int", value)


def _float(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        if -_FLOAT_MAX <= value <= _FLOAT_MAX:  # not NaN nor infinite (YAML has them; 1e999 in JSON)
            return value
        raise ConfigInvalid(f"Expected a finite `float`, got {value}")
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise ConfigInvalid("Expected `float`, got an `int` too large for one") from None
    raise _expected("float", value)


def _str(value: Any) -> Any:
    if type(value) is str:
        return value
    raise _expected("str", value)


def _bool(value: Any) -> Any:
    if type(value) is bool:
        return value
    raise _expected("bool", value)


def _null(value: Any) -> Any:
    if value is None:
        return None
    raise _expected("null", value)


_SCALARS: dict[Any, tuple[Convert, str]] = {int: (_int, "int"), float: (_float, "float"), str: (_str, "str"),
                                            bool: (_bool, "bool"), type(None): (_null, "null")}
_converters: dict[Any, Convert] = {}


def converter(t: Any) -> Convert:
    """The function that reads JSON data as type ``t`` (cached)."""
    conv = _converters.get(t)
    if conv is None:
        conv = _converters[t] = _build(t)
    return conv


def convert(data: Any, t: type[T]) -> T:
    """``data`` (parsed JSON or YAML: dicts, lists, scalars) as ``t``; :class:`ConfigInvalid` if it
    breaks the schema. Records of the right class in ``data`` are taken as they are."""
    try:
        return typing.cast(T, converter(t)(data))
    finally:
        _forget_shared()


def _build(t: Any) -> Convert:
    if t in _SCALARS:
        return _SCALARS[t][0]
    if isinstance(t, type) and issubclass(t, Record):
        return _record(t)
    origin, args = get_origin(t), get_args(t)
    if origin is Annotated:
        return _ruled(args[0], [m for m in t.__metadata__ if isinstance(m, Rule)])
    if origin is Literal:
        return _literal(args)
    if origin in (Union, types.UnionType):
        return _union(args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _array(converter(args[0]), tuple)
    if origin is list:
        return _array(converter(args[0]), list)
    if origin is dict:
        return _object(converter(args[0]), converter(args[1]))
    raise TypeError(f"no converter written for {t!r}")


def _what(t: Any) -> str:
    """How an error names what a constrained value should be."""
    origin = get_origin(t)
    if origin in (tuple, list):
        return "array"
    if origin is dict:
        return "object"
    return _SCALARS[t][1] if t in _SCALARS else getattr(t, "__name__", str(t))


Check = Callable[[Any], bool]


def _compare(op: Callable[[Any, Any], bool], bound: float) -> Check:
    return lambda v: op(v, bound)


def _within(low: float, high: float) -> Check:
    return lambda v: low <= v <= high


def _length(op: Callable[[Any, Any], bool], bound: int) -> Check:
    return lambda v: op(len(v), bound)


def _matches(pattern: str) -> Check:
    # RE2's and pydantic's ``$`` is the end of the text; Python's also matches before a final newline.
    search = re.compile(pattern.removesuffix("$") + r"\Z" if pattern.endswith("$") else pattern).search
    return lambda v: search(v) is not None


def _ruled(t: Any, rules: list[Rule]) -> Convert:
    inner = converter(t)
    what = _what(t)
    checks: list[tuple[Check, str]] = []  # each rule alone, with its words
    fast: list[Check] = []  # the same, a range in one check (the usual case)
    for rule in rules:
        bounds: list[tuple[Check, str]] = []
        if rule.ge is not None:
            bounds.append((_compare(operator.ge, rule.ge), f"Expected `{what}` >= {rule.ge}"))
        if rule.gt is not None:
            bounds.append((_compare(operator.gt, rule.gt), f"Expected `{what}` > {rule.gt}"))
        if rule.le is not None:
            bounds.append((_compare(operator.le, rule.le), f"Expected `{what}` <= {rule.le}"))
        if rule.lt is not None:
            bounds.append((_compare(operator.lt, rule.lt), f"Expected `{what}` < {rule.lt}"))
        checks.extend(bounds)
        if rule.ge is not None and rule.le is not None and len(bounds) == 2:
            fast.append(_within(rule.ge, rule.le))
        else:
            fast.extend(ok for ok, _ in bounds)
        others: list[tuple[Check, str]] = []
        if rule.min_length is not None:
            others.append((_length(operator.ge, rule.min_length), f"Expected `{what}` of length >= {rule.min_length}"))
        if rule.max_length is not None:
            others.append((_length(operator.le, rule.max_length), f"Expected `{what}` of length <= {rule.max_length}"))
        if rule.pattern is not None:
            others.append((_matches(rule.pattern), f"Expected `{what}` matching regex {rule.pattern!r}"))
        checks.extend(others)
        fast.extend(ok for ok, _ in others)

    def broken(value: Any) -> ConfigInvalid:
        return ConfigInvalid(next(message for ok, message in checks if not ok(value)))

    if len(fast) == 1:
        [check] = fast

        def ruled_once(value: Any) -> Any:
            value = inner(value)
            if check(value):
                return value
            raise broken(value)

        return ruled_once

    def ruled(value: Any) -> Any:
        value = inner(value)
        for ok in fast:
            if not ok(value):
                raise broken(value)
        return value

    return ruled


def _literal(values: tuple[Any, ...]) -> Convert:
    allowed = frozenset(values)
    kinds = {type(v) for v in values}
    what = _SCALARS[next(iter(kinds))][1] if len(kinds) == 1 else "literal"

    def literal(value: Any) -> Any:
        if type(value) in kinds and value in allowed:
            return value
        if type(value) in kinds:
            raise ConfigInvalid(f"Invalid enum value {value!r}")
        raise _expected(what, value)

    return literal


def _union(options: tuple[Any, ...]) -> Convert:
    rest = [o for o in options if o is not type(None)]
    if len(rest) != 1 or len(options) != 2:
        raise TypeError(f"only `X | None` unions have a converter, not {options!r}")
    inner = converter(rest[0])

    def optional(value: Any) -> Any:
        return None if value is None else inner(value)

    return optional


def _array(item: Convert, make: type[tuple[Any, ...]] | type[list[Any]]) -> Convert:
    def array(value: Any) -> Any:
        kind = type(value)
        if kind is not list and kind is not tuple:
            raise _expected("array", value)
        try:
            return make(map(item, value))
        except ConfigInvalid:
            for i, v in enumerate(value):  # the error again, to say where
                try:
                    item(v)
                except ConfigInvalid as e:
                    raise e.within(f"[{i}]") from None
            raise

    return array


def _object(key: Convert, item: Convert) -> Convert:
    def mapping(value: Any) -> Any:
        if type(value) is not dict:
            raise _expected("object", value)
        out = {}
        for k, v in value.items():
            try:
                out[key(k)] = item(v)
            except ConfigInvalid as e:
                raise e.within("[...]") from None
        return out

    return mapping


def _scalar(t: Any) -> bool:
    """Whether every value of type ``t`` is an immutable JSON scalar."""
    origin = get_origin(t)
    if origin is Annotated:
        return _scalar(get_args(t)[0])
    if origin in (Union, types.UnionType, Literal):
        return all(_scalar(a) if origin is not Literal else type(a) in _SCALARS for a in get_args(t))
    return t in _SCALARS


_SHARED_MAX = 4096  # distinct values remembered per record class, within one read
_shared: list[dict[tuple[Any, ...], Record]] = []


def _forget_shared() -> None:
    """Records are shared within one read, not kept for the next: a reload's old values must go.
    (A read in another thread at the same time only shares less.)"""
    for memo in _shared:
        memo.clear()




def _record(cls: type[Record]) -> Convert:
    plan: list[tuple[str, str, Convert, Any, Any]] | None = None  # name, JSON name, converter, defaults
    # Records of scalars only (a route's retries, timeouts, a backend) repeat across routes: one
    # instance per distinct value is built and shared (they are immutable). At 20,000 routes this
    # halves the time to read them and saves tens of thousands of objects.
    shared: dict[tuple[Any, ...], Record] | None = None

    def record(value: Any) -> Any:
        nonlocal plan, shared
        if type(value) is not dict:
            if type(value) is cls:
                return value
            raise _expected("object", value)
        if plan is None:  # built on first use: the types of later fields may be defined after this class
            fields = record_fields(cls)
            if all(_scalar(f.type) and f.default_factory is None for f in fields):
                shared = {}
                _shared.append(shared)
            plan = [(f.name, f.json_name, converter(f.type), f.default, f.default_factory) for f in fields]
        if shared is None:
            return build(value, plan)
        # The values' types are in the key: 1, 1.0 and True are equal, and not all valid here.
        try:
            key = (*value.items(), *map(type, value.values()))
            return shared[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable value (a list, a dict): not valid here, build() says so
            return build(value, plan)
        made = build(value, plan)
        if len(shared) >= _SHARED_MAX:
            shared.clear()
        shared[key] = made
        return made

    def build(value: dict[str, Any], plan: list[tuple[str, str, Convert, Any, Any]]) -> Any:
        obj = new(cls)
        found = 0
        for name, key, conv, default, factory in plan:
            v = value.get(key, MISSING)
            if v is not MISSING:
                found += 1
                try:
                    v = conv(v)
                except ConfigInvalid as e:
                    raise e.within(f".{key}") from None
            elif factory is not None:
                v = factory()
            elif default is MISSING:
                raise ConfigInvalid(f"Object missing required field `{key}`")
            else:
                v = default
            setter(obj, name, v)
        if found != len(value):
            known = {p[1] for p in plan}
            unknown = next(k for k in value if k not in known)
            raise ConfigInvalid(f"Object contains unknown field `{unknown}`")
        if post is not None:
            try:
                post(obj)
            except (ValueError, TypeError) as e:
                raise ConfigInvalid(str(e)) from None
        return obj

    new, setter = object.__new__, object.__setattr__
    post = getattr(cls, "__post_init__", None)
    return record


# --- writing -------------------------------------------------------------------------------------

def _shallow(value: Any) -> dict[str, Any]:
    if isinstance(value, Record):
        return {f.json_name: getattr(value, f.name) for f in value.__record_fields__}
    raise TypeError(f"{type(value).__name__} is not JSON")


def dump_json(value: Any, indent: bool = False) -> str:
    """``value`` (records, dicts, lists, tuples, scalars) as JSON text, every field of a record
    under its JSON name."""
    import orjson  # not on the way to `modelroute --help`; the sidecar has it loaded anyway

    return orjson.dumps(value, default=_shallow, option=orjson.OPT_INDENT_2 if indent else 0).decode()


def to_data(value: Any) -> Any:
    """``value`` as JSON data (records as dicts of every field, tuples as lists): what
    :func:`convert` reads back."""
    if isinstance(value, Record):
        return {f.json_name: to_data(getattr(value, f.name)) for f in value.__record_fields__}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    return value


# --- parsing JSON text ---------------------------------------------------------------------------

_decoder = json.JSONDecoder(parse_constant=lambda name: _not_json(name))
_spaces = re.compile(r"[ \t\n\r]*").match
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_scan_once: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]  # C, one value
# A key without escapes, its colon and the spaces around; what follows a member.
_plain_key = re.compile(r'"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*').match
_after_value = re.compile(r"[ \t\n\r]*([,}])[ \t\n\r]*").match


def _space(s: str, i: int) -> int:
    """The index of the first non-space at or after ``i``."""
    return _spaces(s, i).end()  # type: ignore[union-attr]  # it matches everywhere (maybe nothing)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


ValueAt = Callable[[str, str, int], tuple[Any, int]]  # (key, text, index) -> the value there, the index after


def load_json(text: bytes | str) -> Any:
    """JSON text as data; :class:`ConfigInvalid` if it is not JSON.

    An object, and the objects that are its members, are read one member at a time: one C
    call (which holds the GIL) per member, not one for the whole text, so a thread reading a
    config of 20,000 routes (12 MB) does not stall the event loop.
    """
    return _read(text, _split)


def read_json(text: bytes | str, t: type[T]) -> T:
    """JSON text as ``t``; :class:`ConfigInvalid` for text that is not JSON or a value against
    the schema.

    Read as :func:`load_json` reads, and each member of a record's map of records (the
    config's routes) is converted as soon as it is read: the parsed JSON of one route is alive
    at a time, not that of all, which would leave the process tens of MiB larger at 20,000
    routes (freed, but in the allocator's arenas among the records that stay).
    """
    maps: dict[str, Convert] = {}
    if isinstance(t, type) and issubclass(t, Record):
        for f in record_fields(t):
            if get_origin(f.type) is dict:
                maps[f.json_name] = converter(get_args(f.type)[1])

    def member(key: str, s: str, i: int) -> tuple[Any, int]:
        conv = maps.get(key)
        if conv is None or s[i:i + 1] != "{":
            return _split(key, s, i)
        return _members(s, i, functools.partial(_converted, conv, key))

    try:
        return typing.cast(T, converter(t)(_read(text, member)))
    finally:
        _forget_shared()


def _read(text: bytes | str, value_at: ValueAt) -> Any:
    try:
        s = text.decode() if isinstance(text, bytes) else text
        i = _space(s, 0)
        value, i = _members(s, i, value_at) if s[i:i + 1] == "{" else _scan(s, i)
        i = _space(s, i)
        if i != len(s):
            raise json.JSONDecodeError("Extra data", s, i)
        return value
    except UnicodeDecodeError as e:
        raise ConfigInvalid(f"JSON is malformed: not UTF-8 (byte {e.start})") from None
    except ConfigInvalid:
        raise
    except (ValueError, RecursionError) as e:
        raise ConfigInvalid(f"JSON is malformed: {e}") from None


def _scan(s: str, i: int) -> tuple[Any, int]:
    """The JSON value at ``s[i]`` (one C call), and the index after it."""
    try:
        return _scan_once(s, i)
    except StopIteration as e:
        raise json.JSONDecodeError("Expecting value", s, e.value) from None


def _whole(key: str, s: str, i: int) -> tuple[Any, int]:
    return _scan(s, i)


def _split(key: str, s: str, i: int) -> tuple[Any, int]:
    return _members(s, i, _whole) if s[i:i + 1] == "{" else _scan(s, i)


def _converted(conv: Convert, field: str, key: str, s: str, i: int) -> tuple[Any, int]:
    value, i = _scan(s, i)
    try:
        return conv(value), i
    except ConfigInvalid as e:
        raise e.within("[...]").within(f".{field}") from None


def _members(s: str, i: int, value_at: ValueAt) -> tuple[dict[str, Any], int]:
    """The object that starts at ``s[i]`` (a ``{``), and the index after it."""
    out: dict[str, Any] = {}
    i = _space(s, i + 1)
    if s[i:i + 1] == "}":
        return out, i + 1
    while True:
        m = _plain_key(s, i)
        if m is not None:
            key, i = m.group(1), m.end()
        else:  # a key with escapes, or no key: the long way, with its precise errors
            if s[i:i + 1] != '"':
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, i)
            key, i = _scanstring(s, i + 1)
            i = _space(s, i)
            if s[i:i + 1] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", s, i)
            i = _space(s, i + 1)
        out[key], i = value_at(key, s, i)
        m = _after_value(s, i)
        if m is None:
            raise json.JSONDecodeError("Expecting ',' delimiter", s, _space(s, i))
        i = m.end()
        if m.group(1) == "}":
            return out, i
