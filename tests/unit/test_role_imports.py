"""A role's process imports what that role uses: each role module is imported in a fresh
interpreter and its sys.modules checked. Every module held is memory in a process that
runs all day, once per role."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""

# role module -> packages of p2pshare.services it may load (besides the shared ones)
ROLES = {
    "p2pshare.services.server.role": {"server"},
    "p2pshare.services.announcer": {"announcer"},
    "p2pshare.services.listener.role": {"listener"},
    "p2pshare.services.downloader.role": {"downloader"},
    "p2pshare.services.web.role": {"web"},
    # A torrent's files may come from p2pshare peers through the downloader's job.
    "p2pshare.services.torrent.role": {"torrent", "downloader"},
}
OTHER_ROLES = {"server", "announcer", "listener", "downloader", "web", "torrent"}


def modules_of(module: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("module", sorted(ROLES))
def test_a_role_imports_no_other_role_and_no_cli(module: str) -> None:
    loaded = modules_of(module)
    packages = {m.split(".")[2] for m in loaded if m.startswith("p2pshare.services.")}
    assert (packages & OTHER_ROLES) - ROLES[module] == set()
    assert not {m for m in loaded if m.startswith("p2pshare.cli")}
    assert not {"click", "tabulate", "tqdm", "libtorrent"} & {m.split(".")[0] for m in loaded}


def test_the_web_program_loads_no_key_so_imports_no_cryptography() -> None:
    """It talks to no peer: the node's key and the cryptography package (a few MB) stay out
    of its process."""
    loaded = modules_of("p2pshare.services.web.role")
    assert not {m for m in loaded if m.split(".")[0] == "cryptography"}
    assert "p2pshare.services.net.identity" not in loaded
