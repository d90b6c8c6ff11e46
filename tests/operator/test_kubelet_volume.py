"""The atomic-writer helper lays volumes out as kubelet does."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

from tests.operator import kubelet_volume


def test_layout_of_a_volume(tmp_path: Path) -> None:
    vol = tmp_path / "config"
    assert kubelet_volume.write(vol, {"config.json": b"{}"})
    data = vol / "..data"
    assert data.is_symlink()
    target = os.readlink(data)
    assert target.startswith("..") and "/" not in target
    assert os.readlink(vol / "config.json") == "..data/config.json"
    assert (vol / "config.json").read_bytes() == b"{}"
    assert sorted(p.name for p in vol.iterdir()) == sorted(["..data", "config.json", target])


def test_an_unchanged_payload_is_not_written(tmp_path: Path) -> None:
    vol = tmp_path / "keys"
    kubelet_volume.write(vol, {"a": b"1"})
    before = os.readlink(vol / "..data")
    assert not kubelet_volume.write(vol, {"a": b"1"})
    assert os.readlink(vol / "..data") == before


def test_a_swap_replaces_the_version_adds_and_removes_files(tmp_path: Path) -> None:
    vol = tmp_path / "keys"
    kubelet_volume.write(vol, {"a": b"1", "b": b"2"})
    old = vol / os.readlink(vol / "..data")
    kubelet_volume.write(vol, {"b": b"3", "c": b"4"})
    assert not old.exists()
    assert not (vol / "a").exists() and not (vol / "a").is_symlink()
    assert (vol / "b").read_bytes() == b"3" and (vol / "c").read_bytes() == b"4"
    assert kubelet_volume.current(vol) == {"b": b"3", "c": b"4"}
    assert not (vol / "..data_tmp").exists()


def test_readers_never_see_a_mix(tmp_path: Path) -> None:
    vol = tmp_path / "keys"
    kubelet_volume.write(vol, {"a": b"0", "b": b"0"})
    stop = threading.Event()
    mixes: list[tuple[bytes, bytes]] = []

    def read() -> None:
        while not stop.is_set():
            try:
                data = vol / os.readlink(vol / "..data")  # as a reader that resolves once
                a, b = (data / "a").read_bytes(), (data / "b").read_bytes()
            except FileNotFoundError:
                continue  # the version it resolved was removed: it reads again
            if a != b:
                mixes.append((a, b))

    t = threading.Thread(target=read)
    t.start()
    for i in range(1, 200):
        v = str(i).encode()
        kubelet_volume.write(vol, {"a": v, "b": v})
    stop.set()
    t.join()
    assert mixes == []


def test_files_from_api_objects() -> None:
    cm = {"data": {"config.json": "{}"}, "binaryData": {"blob": base64.b64encode(b"\x00").decode()}}
    assert kubelet_volume.configmap_files(cm) == {"config.json": b"{}", "blob": b"\x00"}
    secret = {"data": {"openai": base64.b64encode(b"k1\nk2").decode(), "vllm": ""}}
    assert kubelet_volume.secret_files(secret) == {"openai": b"k1\nk2", "vllm": b""}
    assert kubelet_volume.configmap_files(None) == {} == kubelet_volume.secret_files(None)
