"""Claude Code, Codex and gemini-cli, installed from npm, run against a real `modelroute serve`.

Each CLI runs as its user would run it, with default settings and its default model, and
with the environment variables that keep it offline (no telemetry, no update checks, no
login). The upstreams are the project's fakes in agent mode (see tests/fakes/behaviour.py):
they answer ``echo: <last user text>``, call a tool only when a ``tool-call:`` line asks,
and answer a tool's result with ``tool said: <result>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL = Path(__file__).with_name("install.sh")
CLIS = ("claude", "codex", "gemini")
RUN_TIMEOUT = 180.0


def install(cli: str) -> Path:
    """The CLI's executable, installed into the version-keyed cache on first use."""
    proc = subprocess.run(["bash", str(INSTALL), cli], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"installing {cli} failed ({proc.returncode}):\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


# Settings that keep each CLI away from everything but the gateway. Claude Code reads its
# endpoint and key from the environment; Codex reads a model provider from config.toml.
def claude_env(home: Path, gateway_root: str) -> dict[str, str]:
    return {
        "ANTHROPIC_BASE_URL": gateway_root,  # http://127.0.0.1:PORT (the SDK adds /v1/messages)
        "ANTHROPIC_API_KEY": "modelroute-placeholder",  # the gateway holds the provider keys
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        **_base_env(home),
    }


CODEX_CONFIG = """\
model_provider = "modelroute"
check_for_update_on_startup = false

[model_providers.modelroute]
name = "modelroute"
base_url = "{base_url}"
env_key = "MODELROUTE_API_KEY"
wire_api = "responses"
supports_websockets = false

[analytics]
enabled = false
"""


def codex_env(home: Path, gateway_url: str) -> dict[str, str]:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(base_url=gateway_url))
    return {"CODEX_HOME": str(codex_home), "MODELROUTE_API_KEY": "modelroute-placeholder", **_base_env(home)}


# gemini-cli: the API-key auth (GOOGLE_GEMINI_BASE_URL alone selects a "gateway" auth that
# 0.61's headless mode refuses), no usage statistics, telemetry or update checks.
GEMINI_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}


def gemini_env(home: Path, gateway_root: str) -> dict[str, str]:
    settings = home / ".gemini"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    return {
        "GOOGLE_GEMINI_BASE_URL": gateway_root,  # http://127.0.0.1:PORT (the SDK adds /v1beta/models/...)
        "GEMINI_API_KEY": "modelroute-placeholder",  # the gateway holds the provider keys
        "GEMINI_CLI_TRUST_WORKSPACE": "true",  # headless runs refuse an untrusted folder otherwise
        **_base_env(home),
    }


def _base_env(home: Path) -> dict[str, str]:
    # A clean environment: no provider key or proxy of the developer's leaks into a run.
    return {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
            "NO_COLOR": "1", "TERM": "dumb"}


@dataclass
class Run:
    args: list[str]
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        return (f"$ {' '.join(self.args[:2])} ... -> {self.returncode} in {self.seconds:.1f}s\n"
                f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}")


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT) -> Run:
    started = time.monotonic()
    try:
        proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        return Run(args, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return Run(args, None, out, err, time.monotonic() - started)
