"""The long fuzz run: many seeded bad requests against a real ``modelroute serve`` with a
fake upstream of every kind (the CI test, tests/gateway/test_fuzz_ingress.py, sends 10,000).

    python bench/fuzz_ingress.py --count 200000 --seed 1 --concurrency 32

Prints throughput, the status mix, peak memory, and every failure (5xx, dropped
connection, a refused-for-sure request forwarded, an error not in the caller's dialect)
with the request that caused it, plus the gateway's distinct tracebacks. Exit status 1
when anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path

from tests.gateway.fuzzgen import Generator, send_all
from tests.gateway.rawhttp import memory
from tests.gateway.test_fuzz_ingress import COUNTING, fuzz_world

MIB = 1024 * 1024


def tracebacks(logs: str) -> dict[str, int]:
    """Distinct tracebacks in the gateway's (JSON) log, keyed by their last frame and exception."""
    found: dict[str, int] = {}
    for line in logs.splitlines():
        try:
            exc = json.loads(line).get("exc")
        except ValueError:
            continue
        if not exc:
            continue
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', exc)
        key = f"{frames[-1] if frames else '?'} {exc.strip().splitlines()[-1]}"
        found[key] = found.get(key, 0) + 1
    return found


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fuzz_world(Path(tmp)) as (gp, up):
        base, _ = memory(gp.proc.pid)
        score = await send_all(f"http://127.0.0.1:{gp.port}", Generator(args.seed), args.count, args.concurrency)
        rss, peak = memory(gp.proc.pid)
        forwarded = sum(1 for u in up.values() for r in u.requests if not r.path.endswith(COUNTING))
        unreadable = {name: u.malformed for name, u in up.items() if u.malformed}
        logs = gp.logs()
    print(f"{score.sent} requests in {score.seconds:.1f}s ({score.sent / score.seconds:.0f}/s), seed {args.seed}")
    print(f"statuses: {dict(sorted(score.statuses.items()))}; forwarded upstream: {forwarded} "
          f"(attempts reported: {score.attempts}); bodies a fake could not read (it answered 400): {unreadable}")
    print(f"RSS: {base / MIB:.0f} MiB at start, {rss / MIB:.0f} MiB at the end, peak {peak / MIB:.0f} MiB")
    for took, what in reversed(score.slowest):
        print(f"slow: {took:.2f}s {what[:400]}")
    failed = False
    for name in ("server_errors", "dropped", "wrongly_forwarded", "wrong_shape"):
        items: list[str] = getattr(score, name)
        print(f"{name}: {len(items)}")
        for item in items[:5]:
            print("   ", item[:600])
        failed |= bool(items)
    for key, n in sorted(tracebacks(logs).items(), key=lambda kv: -kv[1]):
        print(f"traceback x{n}: {key}")
        failed = True
    failed |= forwarded != score.attempts
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
