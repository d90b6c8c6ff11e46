"""10,000 generated bad requests against a real ``modelroute serve`` with a fake upstream of
every kind: no 5xx, no dropped connection, nothing forwarded that had to be refused, every
error in the caller's dialect, bounded memory. Seeded: a failure names the request that
caused it, and the same seed replays it. The long run is ``bench/fuzz_ingress.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.azure import FakeAzureOpenAI
from tests.fakes.base import FakeUpstream
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.gateway.fuzzgen import Generator, send_all
from tests.gateway.harness import FAST, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute
from tests.gateway.rawhttp import memory

SEED = 20261129
COUNT = int(os.environ.get("FUZZ_COUNT", "10000"))
MIB = 1024 * 1024
COUNTING = ("/count_tokens", ":countTokens")  # upstream token counting, which reports no attempts


@contextmanager
def fuzz_world(tmp: Path) -> Iterator[tuple[GatewayProcess, dict[str, FakeUpstream]]]:
    """``modelroute serve`` with routes via-openai, via-azure, via-anthropic, via-gemini, one fake each."""
    with ExitStack() as stack:
        up: dict[str, FakeUpstream] = {
            "openai": stack.enter_context(FakeOpenAI(keys=["sk-o"])),
            "azure": stack.enter_context(FakeAzureOpenAI(keys=["az-1"], deployments={"prod-4o": "gpt-4o"})),
            "anthropic": stack.enter_context(FakeAnthropic(keys=["sk-ant"])),
            "gemini": stack.enter_context(FakeGemini(keys=["g-key"])),
        }
        cfg = tmp / "routes.yaml"
        cfg.write_text(yaml.safe_dump_all([
            *provider_key("openai", "openai", up["openai"].base_url, ["sk-o"], models=[]),  # type: ignore[attr-defined]
            *provider_key("azure", "azure-openai", up["azure"].url, ["az-1"], apiVersion="2024-10-21"),
            *provider_key("anthropic", "anthropic", up["anthropic"].base_url, ["sk-ant"], models=[]),  # type: ignore[attr-defined]
            *provider_key("gemini", "gemini", up["gemini"].base_url, ["g-key"], models=[]),  # type: ignore[attr-defined]
            model_route("via-openai", ("openai", "gpt-4o"), **FAST),
            model_route("via-azure", ("azure", "prod-4o"), **FAST),
            model_route("via-anthropic", ("anthropic", "claude-sonnet-4-6"), **FAST),
            model_route("via-gemini", ("gemini", "gemini-2.5-flash"), **FAST),
        ]))
        gp = stack.enter_context(modelroute(tmp, "serve", "-f", str(cfg), "--log-level", "warning"))
        yield gp, up


async def test_ten_thousand_bad_requests_get_clear_4xx_and_break_nothing(tmp_path: Path) -> None:
    with fuzz_world(tmp_path) as (gp, up):
        base_rss, _ = memory(gp.proc.pid)
        score = await send_all(f"http://127.0.0.1:{gp.port}", Generator(SEED), COUNT)
        _, peak = memory(gp.proc.pid)
        # count_tokens asks the route's first backend to count, outside the attempt loop.
        forwarded = sum(1 for u in up.values() for r in u.requests if not r.path.endswith(COUNTING))
        alive = gp.proc.poll() is None
        logs = gp.logs()
    print(f"fuzz: {score.sent} requests in {score.seconds:.1f}s, statuses {dict(sorted(score.statuses.items()))}, "
          f"{forwarded} forwarded, peak RSS +{(peak - base_rss) / MIB:.0f} MiB")
    assert score.sent == COUNT and alive
    assert score.server_errors == [], "\n".join(score.server_errors[:10])
    assert score.dropped == [], "\n".join(score.dropped[:10])
    assert score.wrongly_forwarded == [], "\n".join(score.wrongly_forwarded[:10])
    assert score.wrong_shape == [], "\n".join(score.wrong_shape[:10])
    # Every upstream call the fakes saw is one the gateway owned up to in x-modelroute-attempts.
    assert forwarded == score.attempts
    # The run exercised both sides: refused by the gateway, and answered by an upstream.
    assert score.statuses[400] > COUNT // 4 and score.statuses[200] > COUNT // 20, score.statuses
    assert peak - base_rss < 256 * MIB
    assert "Traceback" not in logs, logs[-5000:]
