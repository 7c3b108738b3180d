"""pytest configuration of the deploy tests (`make deploy-test`, `make chart-test`)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


@pytest.fixture(scope="session")
def keelson_bin() -> str:
    """The keelson binary. Missing: a failure when KEELSON_BIN names it (make test builds it
    first), otherwise a skip saying how to get one."""
    binary = harness.keelson_binary()
    if binary is None:
        pytest.skip("no keelson binary: run `make build` or set KEELSON_BIN (these tests run it)")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"KEELSON_BIN={binary} is not an executable file")
    return binary


@pytest.fixture(scope="session")
def etcdctl_bin() -> str:
    if not os.access(harness.ETCDCTL, os.X_OK):
        pytest.fail(f"{harness.ETCDCTL} is missing: scripts/install-deps.sh --test installs Debian's etcd-client")
    return harness.ETCDCTL


@pytest.fixture(scope="session")
def promtool() -> str:
    if not os.access(harness.PROMTOOL, os.X_OK):
        pytest.fail(f"{harness.PROMTOOL} is missing: scripts/install-deps.sh --test installs Debian's prometheus")
    return harness.PROMTOOL


def tool(name: str) -> str:
    """A tool of the deploy venv (scripts/install-deploy-tools.sh), or fail saying so."""
    venv_bin = Path(sys.executable).parent
    path = venv_bin / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: run scripts/install-deploy-tools.sh")
    return found
