"""The image image/build.sh makes is the one the Dockerfile describes.

image/build.sh builds the Dockerfile itself (buildah); these tests read what came out,
the OCI archive the node imports, and hold it to the Dockerfile's final stage.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

import pytest

from modelroute_operator.settings import InjectionSettings
from tests.controlplane.cluster import wait_for
from tests.node.conftest import app_pod, pod
from tests.node.node import Node, NodeAssets
from tests.operator.conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CA_PROBE = Path(__file__).with_name("ca_probe.py")  # run in a pod, not imported here
# Uncompressed; the layers travel gzip-compressed at about a quarter of that.
MAX_IMAGE_BYTES = 340 * 1024 * 1024

pytestmark = pytest.mark.node


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
    assert member is not None
    return member.read()


Image = tuple[dict[str, Any], list[tarfile.TarInfo], dict[str, bytes]]


def read_archive(path: Path, contents_of: frozenset[str] = frozenset()) -> Image:
    """(image config, every file entry of every layer, the data of the files named in
    `contents_of` (no leading ./; a later layer's wins)) of a one-image OCI archive."""
    with tarfile.open(path) as tar:
        index = json.loads(_file(tar, "index.json"))
        manifest = json.loads(_blob(tar, index["manifests"][0]["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
        entries: list[tarfile.TarInfo] = []
        contents: dict[str, bytes] = {}
        for layer in manifest["layers"]:
            member = tar.extractfile(f"blobs/sha256/{layer['digest'].split(':', 1)[1]}")
            assert member is not None
            with tarfile.open(fileobj=member, mode="r|*") as layer_tar:
                for entry in layer_tar:
                    if entry.isfile() and entry.name.lstrip("./") in contents_of:
                        data = layer_tar.extractfile(entry)
                        assert data is not None
                        contents[entry.name.lstrip("./")] = data.read()
                    entries.append(entry)
    return config, entries, contents


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


CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(scope="module")
def image(node_assets: NodeAssets) -> Image:
    return read_archive(node_assets.image_archive, frozenset({CA_BUNDLE}))


def test_the_image_config_is_the_dockerfiles(image: Image) -> None:
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
    image: Image,
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


def test_the_image_is_small(image: Image) -> None:
    size = sum(e.size for e in image[1] if e.isfile())
    assert size < MAX_IMAGE_BYTES, f"{size / 2**20:.0f} MiB"


def test_the_image_has_debians_ca_store(image: Image) -> None:
    """The bundle and OpenSSL's hashed directory (what a CA is looked up by, one file per
    subject hash: <hash>.0, .1 ...), each link leading to a certificate in the image."""
    entries = {e.name.lstrip("./"): e for e in image[1]}  # a later layer's entry wins
    bundle = image[2][CA_BUNDLE]
    roots = bundle.count(b"-----BEGIN CERTIFICATE-----")
    assert roots > 100, roots

    def resolve(name: str) -> tarfile.TarInfo:
        for _ in range(10):
            entry = entries[name]
            if not entry.issym():
                return entry
            name = posixpath.normpath(posixpath.join(posixpath.dirname(name), entry.linkname)).lstrip("/")
        raise AssertionError(f"{name}: a symlink loop")

    hashed = [n for n in entries if re.fullmatch(r"etc/ssl/certs/[0-9a-f]{8}\.[0-9]+", n)]
    assert len(hashed) == roots  # one per root of the bundle
    for name in hashed:
        target = resolve(name)
        assert target.isfile() and target.size > 0, name


def test_a_pod_verifies_tls_with_the_images_ca_store(node: Node, node_assets: NodeAssets,
                                                      node_cluster: Cluster) -> None:
    """In a pod of the image (non-root, read-only root file system): Python's default context
    loads the system store; a context with only the CA directory finds every root of the
    bundle by its hash, lazily; the sidecar's upstream context takes a private CA from
    SSL_CERT_FILE or SSL_CERT_DIR. tests/node/ca_probe.py says how."""
    name, namespace = "ca-probe", "default"
    probe = app_pod(name, node_assets.image, CA_PROBE.read_text(), inject=False)
    probe["spec"]["restartPolicy"] = "Never"
    node_cluster.apply(probe, namespace)
    try:
        phase = wait_for(lambda: pod(node_cluster, name, namespace)["status"].get("phase") in ("Succeeded", "Failed")
                         and pod(node_cluster, name, namespace)["status"]["phase"],
                         timeout=120, interval=0.5, what=f"pod {name} to finish",
                         on_timeout=lambda: node_cluster.kubectl("describe", "pod", name, "-n", namespace,
                                                                 check=False).stdout[-2000:])
        logs = node_cluster.kubectl("logs", name, "-n", namespace).stdout
        assert phase == "Succeeded", logs
        found = json.loads(logs.strip().splitlines()[-1])  # after any warning on stderr
    finally:
        node_cluster.kubectl("delete", "pod", name, "-n", namespace, "--wait=false", "--ignore-not-found")
    system = found["system"]
    assert system["bundle"] > 100, found
    assert system["default_context_cas"] == system["bundle"]
    assert system["capath"] == "/usr/lib/ssl/certs"  # Debian's OpenSSL: a link to /etc/ssl/certs
    # Found by hash: the signature fails (7), or the root has expired (10); never "unable to
    # get local issuer certificate" (20). Loaded as looked up: none before, each one after.
    assert set(system["capath_codes"]) <= {"7", "10"}, system["capath_codes"]
    assert system["capath_codes"].get("7", 0) > 100
    assert (system["capath_cas_before"], system["capath_cas_after"]) == (0, system["bundle"])
    assert found["private_ca"] == {"without": 20, "SSL_CERT_FILE": None, "SSL_CERT_DIR": None}
