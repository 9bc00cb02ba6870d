"""The download folder is checked before a download fetches anything (issue 36): a
read-only folder is one sentence at once, not a whole file fetched and thrown away."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pshare.services.downloader.finish import JobFailed
from p2pshare.services.downloader.job import check_download_folder
from p2pshare.services.settings import load_settings


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (a tmpfs mounted ro; needs root): root's own writes fail."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def test_a_read_only_download_folder_fails_before_fetching(tmp_path: Path, read_only: Path) -> None:
    settings = load_settings(
        {"P2P_HOME": str(tmp_path / "home"), "P2P_DOWNLOAD_DIR": str(read_only)}
    )
    with pytest.raises(JobFailed) as exc:
        check_download_folder(settings, 1000, 7)
    assert str(exc.value) == (
        f"cannot write into the download folder {read_only}: Read-only file system"
    )


def test_a_writable_folder_passes_and_keeps_nothing(tmp_path: Path) -> None:
    settings = load_settings({"P2P_HOME": str(tmp_path / "home")})
    check_download_folder(settings, 10**6, 7)
    assert list(settings.download_dir.iterdir()) == []
