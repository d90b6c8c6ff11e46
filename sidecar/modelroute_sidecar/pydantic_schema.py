"""pydantic models derived from the config's records, for the resource models.

The custom resources (:mod:`.resources`) are validated with pydantic, and some of their
fields are parts of the compiled config (``spec.retries``, ``spec.timeouts``,
``spec.mock``). Their schema is written once, as the records in :mod:`.config`; this module
builds the pydantic model of a record from the record's own description of it
(:func:`.schema.record_fields`: field names, JSON names, types, defaults, rules), so a
resource and the sidecar's config refuse the same values, and a resource's errors keep
pydantic's words. A record's ``__post_init__`` checks run too, after the fields validate.

Only ``modelroute serve`` and the operator import this (and pydantic); the sidecar never does.
"""

from __future__ import annotations

import functools
import types
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from .schema import Record, Rule, record_fields, to_data


class RecordModel(BaseModel):
    """The base of every derived model; :meth:`to_record` gives the config's record."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    __record__: type[Record]

    def to_record(self) -> Any:
        return _record_of(self)

    if TYPE_CHECKING:  # the fields are the record's, made at run time

        def __getattr__(self, name: str) -> Any: ...


def _record_of(value: Any) -> Any:
    if isinstance(value, RecordModel):
        return value.__record__(**{name: _record_of(getattr(value, name)) for name in type(value).model_fields})
    if isinstance(value, (list, tuple)):
        return type(value)(_record_of(v) for v in value)
    if isinstance(value, dict):
        return {k: _record_of(v) for k, v in value.items()}
    return value


def _annotation(t: Any) -> Any:
    """The pydantic annotation of one record field's type, rules included."""
    origin, args = get_origin(t), get_args(t)
    if origin is Annotated:
        rules: dict[str, Any] = {}
        for rule in t.__metadata__:
            if isinstance(rule, Rule):
                rules.update(rule.given())
        # A rule's pattern already means what pydantic's (Rust) regex makes of it: `$` is the end.
        return Annotated[_annotation(args[0]), Field(**rules)] if rules else _annotation(args[0])
    if origin in (Union, types.UnionType):
        return functools.reduce(lambda a, b: a | b, [_annotation(x) for x in args])
    if origin is Literal or t in (int, float, str, bool, type(None)):
        return t
    if isinstance(t, type) and issubclass(t, Record):
        return model_of(t)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple[_annotation(args[0]), ...]  # type: ignore[misc]
    if origin is list:
        return list[_annotation(args[0])]  # type: ignore[misc]
    if origin is dict:
        return dict[_annotation(args[0]), _annotation(args[1])]  # type: ignore[misc]
    raise TypeError(f"no pydantic equivalent written for {t!r}")


@functools.cache
def model_of(record: type[Record]) -> type[RecordModel]:
    """The pydantic model of ``record``: same fields, JSON names (as aliases), defaults and rules."""
    fields: dict[str, Any] = {}
    for f in record_fields(record):
        kw: dict[str, Any] = {"alias": f.json_name} if f.json_name != f.name else {}
        if f.required:
            fields[f.name] = (_annotation(f.type), Field(**kw))
        elif f.default_factory is not None:
            fields[f.name] = (_annotation(f.type), Field(default_factory=f.default_factory, **kw))
        else:
            default = f.default
            if isinstance(default, Record):
                default = model_of(type(default)).model_validate(to_data(default))
            fields[f.name] = (_annotation(f.type), Field(default, **kw))
    checks: Any = model_validator(mode="after")(_run_checks)
    model = create_model(record.__name__, __base__=RecordModel, __module__=__name__,
                         __validators__={"_record_checks": checks},
                         __doc__=record.__doc__, **fields)
    model.__record__ = record
    return cast(type[RecordModel], model)


def _run_checks(self: RecordModel) -> RecordModel:
    # The record's __post_init__ (cross-field rules, header and name checks) raises ValueError,
    # which pydantic reports as a "Value error" at this model's place.
    if hasattr(self.__record__, "__post_init__"):
        self.to_record()
    return self
