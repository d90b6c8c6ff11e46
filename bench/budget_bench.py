"""What an active ModelBudget adds to a request (issue 12), measured in one run.

Four gateways, the same routes and the same instant upstream (``bench.fast_upstream``):
``gateway`` without budgets, ``gateway-control`` the same again (an A/A control: its difference
from ``gateway`` is the run's noise floor, which on a loaded machine is tens of microseconds of
CPU a request, more than a budget's own cost), ``gateway-budget`` with a ModelBudget that counts every request
(limits in USD, tokens and requests over a minute and a month window, never reached), and
``gateway-budget-journal``, the same with ``--state-dir`` (each request also appends its reserve
and settle lines to the journal). They are measured round-robin in small batches
(``sidecar_bench.measure_sequential``), so machine noise falls on all alike: a budget's cost is
the difference from ``gateway``, non-streaming and streaming, with the servers' CPU time per
request. The gateways share one core when pinning is possible.

Run: ``python -m bench.budget_bench`` (about two minutes), ``--rounds``/``--batch`` for more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.sidecar_bench import Path_, Proc, Samples, free_port, gateway_yaml, measure_sequential, wait_http

BUDGET = """\
---
apiVersion: modelroute.dev/v1alpha1
kind: ModelBudget
metadata: {name: bench}
spec:
  selector: {routes: [bench]}
  limits:
  - {window: 1m, requests: 1000000000, tokens: 1000000000000}
  - {window: month, usd: 1000000, requests: 1000000000}
"""


class _Proc(Proc):
    """CPU time from /proc/<pid>/schedstat (nanoseconds on a CPU), not clock ticks: a budget's
    cost per request is a few microseconds, under the 10 ms tick divided by the requests."""

    def cpu(self) -> float:
        try:
            with open(f"/proc/{self.pid}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return super().cpu()


def _cores() -> tuple[set[int] | None, set[int] | None]:
    """(load generator + upstream, gateways) on different cores when there are two."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


def _row(name: str, s: dict[str, Samples], base: dict[str, Samples] | None) -> dict[str, Any]:
    total = s["total"].summary()
    row = {"path": name, **{k: total[k] for k in ("n", "errors", "p50_ms", "p99_ms", "cpu_us_per_request")}}
    if base is not None:
        b = base["total"].summary()
        for k in ("p50_ms", "p99_ms", "cpu_us_per_request"):
            row[f"added_{k}"] = (total[k] - b[k]) if total[k] is not None and b[k] is not None else None
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="budget-bench-"))
    load_cores, sut_cores = (None, None) if args.no_pin else _cores()
    if load_cores:
        os.sched_setaffinity(0, load_cores)
    procs: list[Proc] = []
    try:
        up_port = free_port()
        upstream = Proc("upstream", [sys.executable, "-m", "bench.fast_upstream", "--port", str(up_port),
                                     "--chunks", "20"], load_cores, tmp / "upstream.log")
        upstream.start()
        procs.append(upstream)
        plain, budgeted = tmp / "plain.yaml", tmp / "budget.yaml"
        plain.write_text(gateway_yaml(up_port))
        budgeted.write_text(gateway_yaml(up_port) + BUDGET)
        paths = []
        for name, cfg, extra in (("gateway", plain, []), ("gateway-control", plain, []),
                                 ("gateway-budget", budgeted, []),
                                 ("gateway-budget-journal", budgeted, ["--state-dir", str(tmp / "state")])):
            port, mport = free_port(), free_port()
            gw_proc = _Proc(name, [sys.executable, "-m", "modelroute_sidecar", "serve", "-f", str(cfg), "--port",
                                   str(port), "--metrics-port", str(mport), "--log-level", "warning", *extra],
                            sut_cores, tmp / f"{name}.log")
            gw_proc.start()
            procs.append(gw_proc)
            paths.append(Path_(name, name, port, gw_proc, ready_path="/readyz", ready_port=mport, routed_slow=True))
        wait_http(upstream, up_port, None, 30)
        for p in paths:
            assert p.proc is not None
            wait_http(p.proc, p.ready_port or p.port, p.ready_path, 30)
        out: dict[str, Any] = {"rounds": args.rounds, "batch": args.batch, "pinned": sut_cores is not None}
        for kind, stream in (("chat", False), ("stream", True)):
            res = await measure_sequential(paths, args.warmup, args.rounds, args.batch, stream=stream)
            out[kind] = [_row("gateway", res["gateway"], None),
                         *(_row(n, res[n], res["gateway"])
                           for n in ("gateway-control", "gateway-budget", "gateway-budget-journal"))]
        journal = tmp / "state" / "budgets.journal"
        out["journal_lines"] = journal.read_bytes().count(b"\n") if journal.exists() else 0
        return out
    finally:
        for proc in reversed(procs):
            proc.stop()


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.budget_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    out = asyncio.run(run(args))
    for kind in ("chat", "stream"):
        print(f"\n{kind}: {args.rounds} rounds x {args.batch} sequential requests per gateway, round-robin")
        print(f"{'path':24} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} {'added p50':>10} {'added p99':>10} "
              f"{'added CPU us':>12}")
        for r in out[kind]:
            print(f"{r['path']:24} {_fmt(r['p50_ms']):>8} {_fmt(r['p99_ms']):>8} {_fmt(r['cpu_us_per_request']):>10} "
                  f"{_fmt(r.get('added_p50_ms')):>10} {_fmt(r.get('added_p99_ms')):>10} "
                  f"{_fmt(r.get('added_cpu_us_per_request')):>12}")
    print(f"\njournal lines written by gateway-budget-journal: {out['journal_lines']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
