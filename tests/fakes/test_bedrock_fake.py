"""The Bedrock fake's SigV4 verifier and event stream encoder, against AWS's published figures."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from tests.fakes.aws_wire import (
    AwsCredential,
    SigV4Error,
    canonical_request,
    canonical_uri,
    encode_message,
    signature,
    signing_key,
    string_to_sign,
    verify_sigv4,
)

# AWS's SigV4 test suite (get-vanilla, post-vanilla) and its documented example credentials.
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
VANILLA = {"host": ["example.amazonaws.com"], "x-amz-date": ["20150830T123600Z"]}
EMPTY = hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("method, expected", [
    ("GET", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("POST", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
])
def test_the_aws_test_suite_vanilla_signatures(method: str, expected: str) -> None:
    canonical = canonical_request(method, "/", "", VANILLA, ["host", "x-amz-date"], EMPTY)
    assert canonical == (f"{method}\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
                         f"host;x-amz-date\n{EMPTY}")
    sts = string_to_sign("20150830T123600Z", "20150830/us-east-1/service/aws4_request", canonical)
    if method == "GET":
        assert sts.endswith("\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63")
    assert signature(SECRET, "20150830T123600Z", "us-east-1", "service", canonical) == expected
    auth = (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={expected}")
    when = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
    assert verify_sigv4(method=method, raw_path="/", raw_query="", headers={**VANILLA, "authorization": [auth]},
                        body=b"", credentials={"AKIDEXAMPLE": AwsCredential(SECRET)}, region="us-east-1",
                        service="service", now=when) == "AKIDEXAMPLE"


def test_the_documented_signing_key() -> None:
    # IAM User Guide example: 20150830 / us-east-1 / iam.
    assert signing_key(SECRET, "20150830", "us-east-1", "iam").hex() == \
        "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"


def test_paths_are_encoded_once_more_as_sent() -> None:
    assert canonical_uri("/model/amazon.nova-pro-v1:0/converse") == "/model/amazon.nova-pro-v1%3A0/converse"
    assert canonical_uri("/model/a%3Ab/converse") == "/model/a%253Ab/converse"
    assert canonical_uri("/a/./b/../c") == "/a/c"


def _signed(**change: object) -> dict[str, object]:
    sig = "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
    auth = (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={sig}")
    args: dict[str, object] = {"method": "POST", "raw_path": "/", "raw_query": "", "body": b"",
                               "headers": {**VANILLA, "authorization": [auth]},
                               "credentials": {"AKIDEXAMPLE": AwsCredential(SECRET)}, "region": "us-east-1",
                               "service": "service", "now": datetime(2015, 8, 30, 12, 36, tzinfo=UTC)}
    args.update(change)
    return args


@pytest.mark.parametrize("change, refusal", [
    ({"body": b"{}"}, "InvalidSignatureException"),  # the payload is signed
    ({"raw_path": "/other"}, "InvalidSignatureException"),
    ({"region": "eu-west-1"}, "InvalidSignatureException"),
    ({"service": "bedrock"}, "InvalidSignatureException"),
    ({"now": datetime(2015, 8, 30, 12, 41, 1, tzinfo=UTC)}, "InvalidSignatureException"),  # expired
    ({"credentials": {"AKIDEXAMPLE": AwsCredential("another")}}, "InvalidSignatureException"),
    ({"credentials": {}}, "UnrecognizedClientException"),
    ({"credentials": {"AKIDEXAMPLE": AwsCredential(SECRET, "token")}}, "UnrecognizedClientException"),
    ({"headers": VANILLA}, "MissingAuthenticationTokenException"),
])
def test_what_the_verifier_refuses(change: dict[str, object], refusal: str) -> None:
    verify_sigv4(**_signed())  # type: ignore[arg-type]  # the unchanged request passes
    with pytest.raises(SigV4Error) as e:
        verify_sigv4(**_signed(**change))  # type: ignore[arg-type]
    assert e.value.name == refusal


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEXAMPLE/tok+en="])
def test_a_request_signed_by_the_sidecar_verifies(token: str | None) -> None:
    from modelroute_sidecar.credentials import AwsCredentials
    from modelroute_sidecar.providers.aws_sigv4 import sign

    url = "http://127.0.0.1:8080/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/converse"
    body = b'{"messages":[]}'
    headers = sign(AwsCredentials("AKIAIOSFODNN7EXAMPLE", SECRET, token), "us-west-2", "bedrock", url,
                   {"content-type": "application/json"}, body)
    received = {k.lower(): [v] for k, v in headers.items()} | {"host": ["127.0.0.1:8080"]}
    assert verify_sigv4(method="POST", raw_path=url[len("http://127.0.0.1:8080"):], raw_query="", headers=received,
                        body=body, credentials={"AKIAIOSFODNN7EXAMPLE": AwsCredential(SECRET, token)},
                        region="us-west-2", service="bedrock") == "AKIAIOSFODNN7EXAMPLE"


def test_event_stream_messages_decode_with_the_aws_sdk_decoder() -> None:
    from botocore.eventstream import EventStreamBuffer

    buf = EventStreamBuffer()
    buf.add_data(encode_message({":event-type": "messageStart", ":message-type": "event"}, b'{"role":"assistant"}'))
    [msg] = list(buf)
    assert msg.headers == {":event-type": "messageStart", ":message-type": "event"}
    assert msg.payload == b'{"role":"assistant"}'


def test_timestamps_within_five_minutes_pass() -> None:
    verify_sigv4(**_signed(now=datetime(2015, 8, 30, 12, 36, tzinfo=UTC) + timedelta(minutes=4)))  # type: ignore[arg-type]
