"""The Go build scripts' behaviour around the build, with a stand-in `go` on PATH (the real
builds take minutes): progress while building and while waiting for the shared lock, go's
errors on failure, and `pytest --collect-only` never building anything."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.controlplane.cluster import BUILD_SCRIPT

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_BUILD_SCRIPT = ROOT / "tests" / "prometheus" / "build.sh"
SCRIPTS = [BUILD_SCRIPT, PROMETHEUS_BUILD_SCRIPT]

# `go build -v` prints one import path per package it compiles, on stderr; this one takes a
# while over it, then writes what `-o` asked for (a file, or one per tool into a directory).
FAKE_GO = textwrap.dedent("""\
    #!/usr/bin/env bash
    echo "$*" >> "$FAKE_GO_CALLS"
    [[ "$1" == build ]] || exit 0
    for i in $(seq 1 "${FAKE_GO_PACKAGES:-4}"); do echo "example.com/pkg$i" >&2; sleep 0.5; done
    if [[ -n "${FAKE_GO_FAIL:-}" ]]; then echo "./main.go:3:1: syntax error: boom" >&2; exit 1; fi
    while (($#)); do
        if [[ "$1" == -o ]]; then out="$2"; fi
        shift
    done
    script='#!/bin/sh
    echo fake'
    if [[ "$out" == */ ]]; then
        for b in server kube-apiserver kube-controller-manager kubectl helm; do
            printf '%s\\n' "$script" > "$out$b"; chmod +x "$out$b"
        done
    else
        printf '%s\\n' "$script" > "$out"; chmod +x "$out"
    fi
""")


@pytest.fixture
def fake_go(tmp_path: Path) -> dict[str, str]:
    """An environment whose `go` is the stand-in, with empty caches of its own."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text(FAKE_GO)
    go.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBEBUILDER_ASSETS", "MODELROUTE_PROMETHEUS")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        FAKE_GO_CALLS=str(tmp_path / "go-calls"),
        MODELROUTE_CONTROLPLANE_CACHE=str(tmp_path / "cache" / "controlplane"),
        MODELROUTE_PROMETHEUS_CACHE=str(tmp_path / "cache" / "prometheus"),
        MODELROUTE_PROGRESS_SECONDS="0.4",
    )
    return env


def go_calls(env: dict[str, str]) -> list[str]:
    path = Path(env["FAKE_GO_CALLS"])
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.parent.name)
def test_a_build_reports_progress_then_the_cache_answers_at_once(fake_go: dict[str, str], script: Path) -> None:
    first = subprocess.run(["bash", str(script)], env=fake_go, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    built = Path(first.stdout.splitlines()[-1])
    assert built.exists() and str(built).startswith(str(Path(fake_go["FAKE_GO_CALLS"]).parent / "cache"))
    # What is built, then lines with the time elapsed and the packages compiled so far.
    assert "building " in first.stderr, first.stderr
    assert "s elapsed, " in first.stderr and "packages compiled (last: example.com/pkg" in first.stderr, first.stderr
    assert "built " in first.stderr.splitlines()[-1]
    assert first.stdout.count("\n") == 1, "stdout is the result alone"

    calls = len(go_calls(fake_go))
    second = subprocess.run(["bash", str(script)], env=fake_go, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert "cached: " in second.stderr
    assert len(go_calls(fake_go)) == calls, "a warm run calls no go at all"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.parent.name)
def test_a_failed_build_shows_go_errors_and_caches_nothing(fake_go: dict[str, str], script: Path) -> None:
    env = {**fake_go, "FAKE_GO_FAIL": "1", "FAKE_GO_PACKAGES": "1"}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stdout == ""
    assert "go build failed (exit 1)" in result.stderr and "syntax error: boom" in result.stderr, result.stderr
    shown = result.stderr.split("its last lines:", 1)[1]
    assert "syntax error: boom" in shown and "example.com/pkg1" not in shown, "the package list is not the error"
    cache = Path(fake_go["FAKE_GO_CALLS"]).parent / "cache"
    assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".build.lock")]


def test_one_go_build_at_a_time_and_the_waiting_one_says_so(fake_go: dict[str, str]) -> None:
    """The control plane's and Prometheus' builds share one lock: the second waits, saying for whom."""
    env = {**fake_go, "FAKE_GO_PACKAGES": "6"}
    first = subprocess.Popen(["bash", str(BUILD_SCRIPT)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not go_calls(env):  # the first holds the lock once it runs go
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(["bash", str(PROMETHEUS_BUILD_SCRIPT)], env=env, capture_output=True, text=True,
                                timeout=60)
    finally:
        _, first_err = first.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, (first_err, second.stderr)
    assert "waiting for another Go build to finish: controlplane build of" in second.stderr, second.stderr
    assert "still waiting for the build lock" in second.stderr, second.stderr
    # They never compiled at the same time: the second's go ran after the first's finished.
    assert [c.split()[0] for c in go_calls(env)] == ["build", "build"]
    assert second.stderr.index("waited ") < second.stderr.index("building prometheus")


def test_collect_only_builds_nothing(fake_go: dict[str, str]) -> None:
    """Listing the tests that need every Go-built binary neither builds nor waits for one."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/controlplane/test_controlplane.py", "tests/chart/test_chart_render.py", "tests/prometheus",
         "tests/node"],
        cwd=ROOT, env=fake_go, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tests collected" in result.stdout
    assert go_calls(fake_go) == []
    assert not (Path(fake_go["FAKE_GO_CALLS"]).parent / "cache").exists()
