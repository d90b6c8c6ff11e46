"""The compiled config's schema (config.json, the operator <-> sidecar contract), read as the
sidecar reads it: JSON text through :func:`from_json`, and the pydantic models that `serve` and
the operator derive from the same records.

Every value against a rule is refused with the rule and its JSON path; unknown fields are refused
at every level; what is written reads back equal; and a resource (pydantic) and config.json
(records) accept and refuse the same values, since both come from one description.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelroute_sidecar.config import (
    BackendConfig,
    ConfigInvalid,
    GatewayConfig,
    MockSettings,
    RetryPolicy,
    RouteConfig,
    Timeouts,
    WorkloadIdentity,
    as_data,
    from_data,
    from_json,
)
from modelroute_sidecar.loader import ConfigError, parse_config
from modelroute_sidecar.pydantic_schema import model_of
from modelroute_sidecar.schema import load_json, replace

PK = {"name": "p", "provider": "openai", "baseURL": "https://api.openai.com/v1"}


def route(**fields: Any) -> dict[str, Any]:
    return {"routes": {"chat": {"model": "chat", **fields}}}


# config.json -> the error's exact words: the rule, then where (msgspec's words, kept).
INVALID: dict[str, tuple[Any, str]] = {
    "below-ge": (route(retries={"maxAttempts": 0}), "Expected `int` >= 1 - at `$.routes[...].retries.maxAttempts`"),
    "above-le": (route(retries={"maxAttempts": 21}), "Expected `int` <= 20 - at `$.routes[...].retries.maxAttempts`"),
    "not-gt": (route(timeouts={"connectSeconds": 0}),
               "Expected `float` > 0 - at `$.routes[...].timeouts.connectSeconds`"),
    "float-for-int": ({"maxBodyBytes": 2048.5}, "Expected `int`, got `float` - at `$.maxBodyBytes`"),
    "bool-for-int": ({"circuitBreaker": {"failureThreshold": True}},
                     "Expected `int`, got `bool` - at `$.circuitBreaker.failureThreshold`"),
    "string-for-float": (route(timeouts={"totalSeconds": "5"}),
                         "Expected `float`, got `str` - at `$.routes[...].timeouts.totalSeconds`"),
    "null-for-str": (route(source=None), "Expected `str`, got `null` - at `$.routes[...].source`"),
    "unknown-top": ({"route": {}}, "Object contains unknown field `route`"),
    "unknown-nested": (route(retries={"maxAttempt": 2}),
                       "Object contains unknown field `maxAttempt` - at `$.routes[...].retries`"),
    "python-name": (route(max_attempts=2), "Object contains unknown field `max_attempts` - at `$.routes[...]`"),
    "missing": ({"routes": {"chat": {}}}, "Object missing required field `model` - at `$.routes[...]`"),
    "enum": (route(strategy="random"), "Invalid enum value 'random' - at `$.routes[...].strategy`"),
    "enum-in-dict": ({"providerKeys": {"p": {**PK, "provider": "opneai"}}},
                     "Invalid enum value 'opneai' - at `$.providerKeys[...].provider`"),
    "array-index": (route(backends=[{"providerKey": "p", "model": "a"}, {"providerKey": "p", "model": 5}]),
                    "Expected `str`, got `int` - at `$.routes[...].backends[1].model`"),
    "not-an-array": (route(backends={"providerKey": "p", "model": "a"}),
                     "Expected `array`, got `object` - at `$.routes[...].backends`"),
    "pattern": (route(allowedServiceAccounts=["web", "Web App"]),
                "Expected `str` matching regex '^[-._a-zA-Z0-9]+$' - at `$.routes[...].allowedServiceAccounts[1]`"),
    # `$` is the end of the text, as in the CRD's RE2 and pydantic (Python's re would let "\n" by).
    "pattern-final-newline": (route(allowedServiceAccounts=["web\n"]),
                              "Expected `str` matching regex '^[-._a-zA-Z0-9]+$' - at "
                              "`$.routes[...].allowedServiceAccounts[0]`"),
    "min-length-str": (route(allowedServiceAccounts=[""]),
                       "Expected `str` of length >= 1 - at `$.routes[...].allowedServiceAccounts[0]`"),
    "min-length-array": ({"budgets": {"b": {"name": "b", "limits": []}}},
                         "Expected `array` of length >= 1 - at `$.budgets[...].limits`"),
    "max-length": ({"providerKeys": {"m": {**PK, "provider": "mock", "mock": {"reply": "x" * 65537}}}},
                   "Expected `str` of length <= 65536 - at `$.providerKeys[...].mock.reply`"),
    "post-init": (route(backends=[{"providerKey": "p", "model": "a/../b"}]),
                  "a model name is 1-256 characters"),
    "cross-field": ({"providerKeys": {"p": {**PK, "workloadIdentity": {}}}},
                    "workloadIdentity takes exactly one of aws, gcp, azure - at "
                    "`$.providerKeys[...].workloadIdentity`"),
    "header": ({"providerKeys": {"p": {**PK, "headers": {"X-A": "a\nb"}}}}, "header 'X-A' cannot be sent"),
    "not-an-object": ([], "Expected `object`, got `array`"),
    "huge-number": ({"prices": {"m": {"input": "<1e999>", "output": 1}}},
                    "Expected a finite `float`, got inf - at `$.prices[...].input`"),
}


@pytest.mark.parametrize(("data", "error"), list(INVALID.values()), ids=list(INVALID))
def test_a_value_against_the_schema_is_refused_with_its_rule_and_path(data: Any, error: str) -> None:
    text = orjson.dumps(data).decode().replace('"<1e999>"', "1e999")  # valid JSON, beyond a double
    with pytest.raises(ConfigInvalid) as e:
        from_json(text, GatewayConfig)
    assert str(e.value).startswith(error), str(e.value)
    with pytest.raises(ConfigError) as sidecar:  # the sidecar's reload: the file, then the same words
        parse_config(text.encode(), "/etc/modelroute/config/config.json")
    assert str(sidecar.value) == f"/etc/modelroute/config/config.json: {e.value}"


@pytest.mark.parametrize(("text", "error"), [
    (b'{"routes": {', "JSON is malformed: Expecting property name"),
    (b'{"routes": {"chat": {"model": "chat"},}}', "JSON is malformed: Expecting property name"),
    (b"{} {}", "JSON is malformed: Extra data"),
    (b'{"maxBodyBytes": NaN}', "JSON is malformed: NaN is not JSON"),
    (b'{"prices": {"m": {"input": Infinity, "output": 1}}}', "JSON is malformed: Infinity is not JSON"),
    (b'{"routes": {"chat": {"model": "ch\xffat"}}}', "JSON is malformed: not UTF-8 (byte 33)"),
    (b"[" * 100_000, "JSON is malformed"),
    (b"", "JSON is malformed: Expecting value"),
])
def test_text_that_is_not_json_is_refused(text: bytes, error: str) -> None:
    with pytest.raises(ConfigInvalid, match="^" + error.replace("(", r"\(").replace(")", r"\)")):
        from_json(text, GatewayConfig)


def test_what_is_written_reads_back_equal_with_every_field_under_its_json_name() -> None:
    config = from_data({
        "providerKeys": {"p": {**PK, "models": ["gpt-*"], "headers": {"X-Team": "a"},
                               "workloadIdentity": {"gcp": {"audience": "aud", "tokenURL": "https://sts.test"}}},
                         "m": {**PK, "name": "m", "provider": "mock", "mock": {"failureRate": 0.5}}},
        "routes": {"chat": {"model": "chat", "backends": [{"providerKey": "p", "model": "gpt-4o", "weight": 2}],
                            "retries": {"backoffMaxSeconds": 1}}},
        "prices": {"x": {"input": 1, "output": 2.5}},
        "budgets": {"b": {"name": "b", "limits": [{"window": "month", "usd": 10}]}},
    }, GatewayConfig)
    text = config.dump_json()
    assert from_json(text, GatewayConfig) == config and from_data(as_data(config), GatewayConfig) == config
    data = orjson.loads(text)
    assert data == as_data(config)
    assert data["providerKeys"]["p"]["baseURL"] == PK["baseURL"]  # an explicit JSON name
    assert data["providerKeys"]["p"]["workloadIdentity"]["gcp"]["tokenURL"] == "https://sts.test"
    assert data["providerKeys"]["p"]["responsesAPI"] == "auto"  # defaults are written too
    assert data["routes"]["chat"]["retries"] == {"maxAttempts": 3, "backoffBaseSeconds": 0.1,
                                                 "backoffMaxSeconds": 1.0, "maxRetryAfterSeconds": 10.0}
    assert config.routes["chat"].retries.backoff_max_seconds == 1.0  # an int read as a float
    assert isinstance(config.routes["chat"].backends, tuple) and config.provider_keys["p"].models == ("gpt-*",)
    assert text.startswith('{\n  "version": 1,\n  "providerKeys": {')  # indented, in field order


def test_records_are_immutable_values() -> None:
    a = RouteConfig(model="chat", backends=(BackendConfig(provider_key="p", model="m"),))
    b = from_data({"model": "chat", "backends": [{"providerKey": "p", "model": "m"}]}, RouteConfig)
    assert a == b and hash(a) == hash(b) and a != replace(a, source="x")
    assert replace(a, source="x").source == "x" and a.source == ""  # a copy, the original unchanged
    assert RetryPolicy() == RetryPolicy(max_attempts=3) != RetryPolicy(max_attempts=4)
    with pytest.raises(AttributeError):
        a.model = "other"  # type: ignore[misc]
    assert copy.copy(a) is a and copy.deepcopy(a) is a
    assert repr(BackendConfig(provider_key="p", model="m")) == "BackendConfig(provider_key='p', model='m', weight=1)"
    with pytest.raises(TypeError, match="missing required argument 'model'"):
        RouteConfig()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected arguments"):
        RouteConfig(model="chat", modle="x")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="model name"):  # the record's own checks run when built in code too
        BackendConfig(provider_key="p", model="../x")
    with pytest.raises(ValueError, match="exactly one"):
        WorkloadIdentity()
    # A default made per instance is not shared.
    assert GatewayConfig().routes is not GatewayConfig().routes


# One description, two readers: the record (config.json) and the derived pydantic model (the
# resources' spec.retries, spec.timeouts, spec.mock, spec.workloadIdentity) agree on every value.
SAME: list[tuple[type, dict[str, Any], bool]] = [
    (RetryPolicy, {"maxAttempts": 20}, True),
    (RetryPolicy, {"maxAttempts": 21}, False),
    (RetryPolicy, {"maxAttempts": 0}, False),
    (RetryPolicy, {"backoffBaseSeconds": -0.1}, False),
    (RetryPolicy, {"maxAttempt": 2}, False),
    (Timeouts, {"connectSeconds": 0}, False),
    (Timeouts, {"connectSeconds": 300, "totalSeconds": 86400}, True),
    (Timeouts, {"totalSeconds": 86401}, False),
    (MockSettings, {"failStatus": 399}, False),
    (MockSettings, {"failStatus": 599, "failureRate": 1, "reply": "x" * 65536}, True),
    (MockSettings, {"failureRate": 1.5}, False),
    (MockSettings, {"reply": "x" * 65537}, False),
    (WorkloadIdentity, {}, False),
    (WorkloadIdentity, {"aws": {}, "gcp": {}}, False),
    (WorkloadIdentity, {"aws": {"roleArn": "arn:aws:iam::123456789012:role/r"}}, True),
    (WorkloadIdentity, {"aws": {"roleArn": "arn:aws:iam::12345:role/r"}}, False),
    (WorkloadIdentity, {"aws": {"region": "eu-west-1\n"}}, False),
    (WorkloadIdentity, {"gcp": {"tokenURL": "https://sts.test", "scopes": ["a"]}}, True),
    (WorkloadIdentity, {"gcp": {"tokenUrl": "https://sts.test"}}, False),
    (WorkloadIdentity, {"gcp": {"tokenURL": "ftp://sts.test"}}, False),
    (WorkloadIdentity, {"azure": {"clientId": "0000-aaaa", "tenantId": "t.example"}}, True),
    (WorkloadIdentity, {"azure": {"clientId": "no spaces"}}, False),
]


@pytest.mark.parametrize(("record", "data", "valid"), SAME, ids=[f"{r.__name__}-{d}-{v}" for r, d, v in SAME])
def test_the_resources_pydantic_models_accept_and_refuse_what_config_json_does(
        record: type, data: dict[str, Any], valid: bool) -> None:
    model = model_of(record)
    if valid:
        assert model.model_validate(data).to_record() == from_data(data, record)
        return
    with pytest.raises(ConfigInvalid):
        from_data(data, record)
    with pytest.raises(pydantic.ValidationError):
        model.model_validate(data)


def test_the_pydantic_model_has_the_records_defaults_and_json_names() -> None:
    model = model_of(RetryPolicy)
    assert model.model_validate({}).to_record() == RetryPolicy()
    assert model.model_validate({"maxAttempts": 5}).to_record() == RetryPolicy(max_attempts=5)
    gcp = model_of(WorkloadIdentity).model_validate({"gcp": {"tokenURL": "https://x"}}).to_record().gcp
    assert gcp.token_url == "https://x" and gcp.iam_credentials_url == "https://iamcredentials.googleapis.com"


# load_json reads objects member by member (to keep the GIL free for the event loop during a big
# reload): it must read exactly what one json.loads call reads, and refuse exactly what it refuses.
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


def _strict_loads(text: str) -> Any:
    return json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


@settings(max_examples=300, deadline=None)
@given(value=_json_values, indent=st.sampled_from([None, 0, 2, "\t"]), separators=st.sampled_from(
    [None, (",", ":"), (" , ", " : "), (",\n", ":\r\n")]))
def test_json_is_read_as_one_json_loads_reads_it(value: Any, indent: Any, separators: Any) -> None:
    text = json.dumps({"a": value, "b": {"c": value}}, indent=indent, separators=separators)
    assert load_json(text) == _strict_loads(text)
    assert load_json(json.dumps(value)) == value


@settings(max_examples=300, deadline=None)
@given(value=_json_values, cut=st.integers(min_value=0), junk=st.sampled_from(["", ",", "}", "{", ":", '"', "x", " ",
                                                                               "NaN", "\\", "\x01"]))
def test_broken_json_is_refused_as_json_loads_refuses_it(value: Any, cut: int, junk: str) -> None:
    text = json.dumps({"a": {"b": value, "c": 1}, "d": value})
    cut %= len(text) + 1
    broken = text[:cut] + junk + text[cut:]
    try:
        expected = _strict_loads(broken)
    except ValueError:
        with pytest.raises(ConfigInvalid, match=r"^JSON is malformed"):
            load_json(broken)
    else:
        assert load_json(broken) == expected


def test_records_of_scalars_are_shared_between_routes_and_only_for_the_same_json_value() -> None:
    # A route's retries, timeouts and backends repeat across thousands of routes: one instance each.
    config = from_data({"routes": {f"r{i}": {"model": f"r{i}", "retries": {"maxAttempts": 2},
                                             "backends": [{"providerKey": "p", "model": "m"}]} for i in range(3)}},
                       GatewayConfig)
    assert len({id(r.retries) for r in config.routes.values()}) == 1
    assert len({id(r.backends[0]) for r in config.routes.values()}) == 1
    # Within one read only: the next read (a reload) does not keep the old config's records alive.
    again = from_json(config.dump_json(), GatewayConfig)
    assert again == config and again.routes["r0"].retries is not config.routes["r0"].retries
    # 1, 1.0 and True are equal in Python, not in the schema: what one was read as is not the other's.
    for bad in (True, 1.0):
        with pytest.raises(ConfigInvalid, match="Expected `int`, got"):
            from_data(route(retries={"maxAttempts": bad}), GatewayConfig)
    for value in (1, 1.0, 1, 1.0):
        seconds = from_data(route(timeouts={"connectSeconds": value}), GatewayConfig).routes["chat"].timeouts
        assert type(seconds.connect_seconds) is float
    with pytest.raises(ConfigInvalid, match="Expected `float`, got `bool`"):
        from_data(route(timeouts={"connectSeconds": True}), GatewayConfig)


RSS_PROBE = """
import gc, sys
from modelroute_sidecar.loader import long_lived, parse_config
def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
raw = open(sys.argv[1], "rb").read()
gc.collect()
before = rss()
with long_lived():  # as a reload builds it
    config = parse_config(raw, sys.argv[1])
gc.collect()
assert len(config.routes) == 20_000
print(rss() - before)
"""


def test_a_big_config_leaves_the_sidecar_no_larger_than_its_records(tmp_path: Path) -> None:
    """20,000 routes (13 MB of config.json) hold about 8 MiB once read. Parsing the whole text
    before validating left the parsed JSON's 50 MiB in the allocator's arenas among the records
    (RSS +59 MiB); msgspec, before, +18 MiB."""
    route_data = {"strategy": "weighted", "backends": [{"providerKey": "openai", "model": "gpt-4o", "weight": 2}],
                  "retries": {"maxAttempts": 2}, "allowedServiceAccounts": ["web"]}
    config = from_data({"routes": {f"m{i}": {"model": f"m{i}", "source": f"ModelRoute default/m{i}", **route_data}
                                   for i in range(20_000)}}, GatewayConfig)
    path = tmp_path / "config.json"
    path.write_text(config.dump_json())
    grown = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path)], capture_output=True, text=True, check=True)
    assert int(grown.stdout) < 20 * 1024, f"{int(grown.stdout) / 1024:.1f} MiB"
