"""The operator names itself to kopf without a passwd entry for its uid (the image's 65532,
OpenShift's arbitrary uids): kopf's own guess, getpass.getuser(), raises there."""

from __future__ import annotations

import getpass
import os

import pytest

from modelroute_operator.runner import peer_identity


def test_no_passwd_entry_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_entry)
    monkeypatch.setenv("HOSTNAME", "modelroute-operator-5d8f-x2x")
    monkeypatch.delenv("POD_ID", raising=False)
    assert peer_identity() == f"modelroute-operator-5d8f-x2x/{os.getpid()}"
    monkeypatch.setenv("POD_ID", "from-the-downward-api")
    assert peer_identity().startswith("from-the-downward-api/")
