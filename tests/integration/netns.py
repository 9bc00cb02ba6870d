"""Network namespaces for tests: the `ip` command, and the reasons to skip without it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def ip_ok(*args: str) -> None:
    done = ip(*args)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"


def require_netns() -> None:
    """Skip the calling test, with the reason, where namespaces cannot be made."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces")
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root")
