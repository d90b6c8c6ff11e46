"""What kubelet does with a ConfigMap or Secret volume, for tests without a kubelet.

kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go) lays a volume out as::

    <dir>/..2026_11_24_08_47_27.1234567/config.json   the files of one version
    <dir>/..data -> ..2026_11_24_08_47_27.1234567      the version in use
    <dir>/config.json -> ..data/config.json            what the container opens

and moves to a new version by writing a new timestamped directory, pointing a new
``..data_tmp`` symlink at it and renaming that over ``..data`` (one atomic rename), then
adding links for new files, removing links for files gone, and deleting the old
directory. A reader sees the old or the new version, never a mix. Nothing is written
when the payload has not changed.

    write(vol / "config", configmap_files(cm))
    write(vol / "keys", secret_files(secret))
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DATA = "..data"
DATA_TMP = "..data_tmp"


def configmap_files(configmap: Mapping[str, Any] | None) -> dict[str, bytes]:
    """The files a ConfigMap volume shows (``data`` and ``binaryData``); none for no ConfigMap
    (an ``optional: true`` volume of a missing object is an empty directory)."""
    if configmap is None:
        return {}
    files = {k: v.encode("utf-8") for k, v in (configmap.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (configmap.get("binaryData") or {}).items()})
    return files


def secret_files(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    """The files a Secret volume shows (``data`` is base64, as the API server returns it)."""
    if secret is None:
        return {}
    files = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    files.update({k: v.encode("utf-8") for k, v in (secret.get("stringData") or {}).items()})
    return files


def current(volume: Path) -> dict[str, bytes]:
    """The payload the volume shows now."""
    data = volume / DATA
    if not data.is_symlink():
        return {}
    return {p.name: p.read_bytes() for p in data.resolve().iterdir() if p.is_file()}


def write(volume: Path, files: Mapping[str, bytes], mode: int = 0o644) -> bool:
    """Project ``files`` into ``volume`` as kubelet does; False when nothing changed."""
    volume.mkdir(parents=True, exist_ok=True)
    data = volume / DATA
    old_dir = data.resolve() if data.is_symlink() else None
    old = current(volume)
    if old_dir is not None and old == dict(files):
        return False

    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    new_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=volume))
    new_dir.chmod(0o755)
    for name, content in files.items():
        path = new_dir / name
        path.write_bytes(content)
        path.chmod(mode)

    tmp = volume / DATA_TMP
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(new_dir.name)
    os.replace(tmp, data)  # the atomic step

    for name in files:
        link = volume / name
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{name}")
    for name in set(old) - set(files):
        link = volume / name
        if link.is_symlink():
            link.unlink()
    if old_dir is not None and old_dir != new_dir:
        shutil.rmtree(old_dir, ignore_errors=True)
    return True
