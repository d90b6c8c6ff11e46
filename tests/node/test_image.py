"""The image image/build.sh makes is the one the Dockerfile describes.

image/build.sh builds the Dockerfile itself (buildah); these tests read what came out,
the OCI archive the node imports, and hold it to the Dockerfile's final stage.
"""

from __future__ import annotations

import json
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

import pytest

from modelroute_operator.settings import InjectionSettings
from tests.node.node import NodeAssets

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
# Uncompressed; the layers travel gzip-compressed at about a quarter of that.
MAX_IMAGE_BYTES = 340 * 1024 * 1024

pytestmark = pytest.mark.node


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
    assert member is not None
    return member.read()


def read_archive(path: Path) -> tuple[dict[str, Any], list[tarfile.TarInfo]]:
    """(image config, every file entry of every layer) of a one-image OCI archive."""
    with tarfile.open(path) as tar:
        index = json.loads(_file(tar, "index.json"))
        manifest = json.loads(_blob(tar, index["manifests"][0]["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
        entries: list[tarfile.TarInfo] = []
        for layer in manifest["layers"]:
            member = tar.extractfile(f"blobs/sha256/{layer['digest'].split(':', 1)[1]}")
            assert member is not None
            with tarfile.open(fileobj=member, mode="r|*") as layer_tar:
                entries.extend(layer_tar)
    return config, entries


def _file(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None
    return member.read()


def final_stage(text: str) -> dict[str, list[str]]:
    """Instruction -> arguments (continuations joined) of the Dockerfile's last stage."""
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    start = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    out: dict[str, list[str]] = {}
    for line in lines[start:]:
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


@pytest.fixture(scope="module")
def image(node_assets: NodeAssets) -> tuple[dict[str, Any], list[tarfile.TarInfo]]:
    return read_archive(node_assets.image_archive)


def test_the_image_config_is_the_dockerfiles(image: tuple[dict[str, Any], list[tarfile.TarInfo]]) -> None:
    config = image[0]["config"]
    stage = final_stage(DOCKERFILE.read_text())
    (user,) = stage["USER"]
    assert config["User"] == user == "65532:65532"
    assert int(user.split(":")[0]) == InjectionSettings().run_as_user  # what the webhook runs it as
    assert config["Entrypoint"] == json.loads(stage["ENTRYPOINT"][0]) == ["modelroute"]
    assert config["Cmd"] == json.loads(stage["CMD"][0]) == ["sidecar"]
    assert set(config["ExposedPorts"]) == {f"{p}/tcp" for p in stage["EXPOSE"][0].split()}
    env = dict(e.split("=", 1) for e in config["Env"])
    for assignment in shlex.split(" ".join(stage["ENV"])):
        name, value = assignment.split("=", 1)
        if "$PATH" in value:  # prepended to the base image's PATH
            assert env[name].startswith(value.split("$PATH")[0]), name
        else:
            assert env[name] == value, name
    labels = dict(a.split("=", 1) for a in shlex.split(" ".join(stage["LABEL"])))
    assert {k: v for k, v in config["Labels"].items() if k in labels} == labels


def test_the_image_holds_the_venv_and_nothing_to_build_with(
    image: tuple[dict[str, Any], list[tarfile.TarInfo]],
) -> None:
    names = {e.name.lstrip("./") for e in image[1]}
    assert "opt/modelroute/bin/modelroute" in names
    assert any(n.startswith("opt/modelroute/lib/python3.11/site-packages/modelroute_operator/") for n in names)
    site = "opt/modelroute/lib/python3.11/site-packages/"
    for tool in ("pip/", "setuptools/"):
        assert not any(n.startswith(site + tool) for n in names), f"{tool} left in the image"
    assert not any(n.startswith("src/") for n in names), "the source tree is copied into the build stage only"
    assert not any(n.startswith("var/lib/apt/lists/") and not n.endswith("/") for n in names)
    assert "usr/bin/python3.11" in names


def test_the_image_is_small(image: tuple[dict[str, Any], list[tarfile.TarInfo]]) -> None:
    size = sum(e.size for e in image[1] if e.isfile())
    assert size < MAX_IMAGE_BYTES, f"{size / 2**20:.0f} MiB"
