"""pydantic models derived from the config's msgspec structs, for the resource models.

The custom resources (:mod:`.resources`) are validated with pydantic, and some of their
fields are parts of the compiled config (``spec.retries``, ``spec.timeouts``,
``spec.mock``). Their schema is written once, as the structs in :mod:`.config`; this module
builds the pydantic model of a struct from msgspec's own description of it (field names,
JSON names, types, defaults, bounds), so a resource and the sidecar's config refuse the
same values, and a resource's errors keep pydantic's words. A struct's ``__post_init__``
checks run too, after the fields validate.

Only ``modelroute serve`` and the operator import this (and pydantic); the sidecar never does.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import msgspec
import msgspec.inspect as mi
from msgspec import Struct
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator


class StructModel(BaseModel):
    """The base of every derived model; :meth:`to_struct` gives the config's struct."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    __struct__: type[Struct]

    def to_struct(self) -> Any:
        return _struct_of(self)

    if TYPE_CHECKING:  # the fields are the struct's, made at run time

        def __getattr__(self, name: str) -> Any: ...


def _struct_of(value: Any) -> Any:
    if isinstance(value, StructModel):
        return value.__struct__(**{name: _struct_of(getattr(value, name)) for name in type(value).model_fields})
    if isinstance(value, (list, tuple)):
        return type(value)(_struct_of(v) for v in value)
    if isinstance(value, dict):
        return {k: _struct_of(v) for k, v in value.items()}
    return value


def _bounds(t: mi.Type) -> dict[str, Any]:
    keys = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "pattern")
    out = {k: getattr(t, k) for k in keys if getattr(t, k, None) is not None}
    if "pattern" in out and out["pattern"].endswith(r"\Z"):
        # The end of the text in Python's re; pydantic's (Rust) regex has no \Z, and its $ means that.
        out["pattern"] = out["pattern"][:-2] + "$"
    return out


def _annotation(t: mi.Type) -> Any:
    """The pydantic annotation of one msgspec type, constraints included."""
    if isinstance(t, mi.UnionType):
        return functools.reduce(lambda a, b: a | b, [_annotation(x) for x in t.types])
    if isinstance(t, mi.NoneType):
        return type(None)
    if isinstance(t, mi.LiteralType):
        return Literal[t.values]
    if isinstance(t, mi.StructType):
        return model_of(t.cls)
    if isinstance(t, (mi.ListType, mi.VarTupleType)):
        inner: Any = _annotation(t.item_type)
        base: Any = list[inner] if isinstance(t, mi.ListType) else tuple[inner, ...]
    elif isinstance(t, mi.DictType):
        base = dict[_annotation(t.key_type), _annotation(t.value_type)]  # type: ignore[misc]
    elif isinstance(t, (mi.IntType, mi.FloatType, mi.StrType, mi.BoolType)):
        base = {mi.IntType: int, mi.FloatType: float, mi.StrType: str, mi.BoolType: bool}[type(t)]
    else:
        raise TypeError(f"no pydantic equivalent written for {t!r}")
    bounds = _bounds(t)
    return Annotated[base, Field(**bounds)] if bounds else base


@functools.cache
def model_of(struct: type[Struct]) -> type[StructModel]:
    """The pydantic model of ``struct``: same fields, JSON names (as aliases), defaults and bounds."""
    info = cast(mi.StructType, mi.type_info(struct))
    fields: dict[str, Any] = {}
    for f in info.fields:
        kw: dict[str, Any] = {"alias": f.encode_name} if f.encode_name != f.name else {}
        if f.required:
            fields[f.name] = (_annotation(f.type), Field(**kw))
        elif f.default is msgspec.NODEFAULT:
            fields[f.name] = (_annotation(f.type), Field(default_factory=f.default_factory, **kw))
        else:
            default = f.default
            if isinstance(default, Struct):
                default = model_of(type(default)).model_validate(msgspec.to_builtins(default))
            fields[f.name] = (_annotation(f.type), Field(default, **kw))
    checks: Any = model_validator(mode="after")(_run_checks)
    model = create_model(struct.__name__, __base__=StructModel, __module__=__name__,
                         __validators__={"_struct_checks": checks},
                         __doc__=struct.__doc__, **fields)
    model.__struct__ = struct
    return cast(type[StructModel], model)


def _run_checks(self: StructModel) -> StructModel:
    # The struct's __post_init__ (cross-field rules, header and name checks) raises ValueError,
    # which pydantic reports as a "Value error" at this model's place.
    if hasattr(self.__struct__, "__post_init__"):
        self.to_struct()
    return self
