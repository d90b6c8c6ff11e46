"""The speed benchmark runs end to end and reports every row.

Timings are not tests: nothing here looks at a figure, only that the benchmark
completes (tiny counts, no LiteLLM) and that its JSON holds each path and measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TINY = ["--quick", "--no-litellm", "--warmup", "5", "--rounds", "2", "--batch", "5", "--stream-rounds", "2",
        "--stream-batch", "3", "--tp-rounds", "1", "--tp-seconds", "0.3", "--concurrency", "4",
        "--open-streams", "20", "--starts", "1", "--chunks", "5"]


def test_quick_bench_completes_with_all_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench.sidecar_bench", *TINY, "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = res["rows"]

    for name in ("direct", "bare", "gateway", "gateway-warn"):
        row = rows[name]
        assert row["latency"]["n"] == 2 * 5, name
        assert row["ttft"]["n"] == 2 * 3, name
        assert row["latency"]["errors"] == 0 and row["ttft"]["errors"] == 0, row
        assert row["throughput"]["requests"] > 0, name
        if name != "direct":
            assert "added_latency_ms" in row and "added_ttft_ms" in row
            assert row["idle_rss_mib"] > 0
    for name in ("bare", "gateway"):
        assert rows[name]["open_streams"]["streams"] == 20
        assert rows[name]["open_streams"]["opened"] == 20, rows[name]["open_streams"]
    assert rows["litellm"]["skipped"] is True
    assert len(res["startup"]["gateway_runs_s"]) == 1

    names = {t["target"] for t in res["targets"]}
    assert any("1x bare" in n for n in names)
    assert any("open streams <= 100 MiB" in n for n in names)
    assert any("throughput" in n for n in names)
    assert any("idle RSS" in n for n in names)
    assert any("start to ready" in n for n in names)
    assert "bench.sidecar_bench" in res["command"]
    for label in ("bare aiohttp proxy", "gateway (default log level)", "gateway --log-level warning",
                  "LiteLLM proxy", "Targets", "Rerun:"):
        assert label in proc.stdout, label
