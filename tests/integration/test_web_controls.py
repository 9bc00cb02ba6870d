"""The dashboard's controls on a real download between two nodes: queue it, pause it (it
keeps its chunks), resume it to the end, and cancel another (its temp file goes). The
seeder is reached through a gate that holds the transfer mid-way, so each control lands
while the download runs, on any machine."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import httpx
import pytest
from chunkgate import ChunkGate
from node import Node, pick_udp_port, seed, wait_until

pytestmark = pytest.mark.integration

CHUNK = 16384
TIMEOUT = 90.0  # a bound for a busy machine, not an expectation


def row(node: Node, name: str) -> dict[str, object]:
    cols = ("id", "status", "bytes_done", "temp_path")
    rows = node.sql(
        f"SELECT {', '.join(cols)} FROM downloads WHERE name = ? ORDER BY id DESC", (name,)
    )
    return dict(zip(cols, rows[0], strict=True)) if rows else {}


def test_dashboard_queues_pauses_resumes_and_cancels_a_running_download(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    seeder = make_node("seed", udp_port=pick_udp_port(), P2P_CHUNK_SIZE=CHUNK)
    leech = make_node("leech")
    files = {"big.bin": os.urandom(200 * CHUNK), "other.bin": os.urandom(100 * CHUNK)}
    for name, data in files.items():
        seed(seeder, name, data)
    seeder.start()
    leech.start_supervised()
    gate = chunk_gate(seeder, leech.udp_port, budget=20)
    port = wait_until(
        lambda: leech.scalar("SELECT value FROM role_settings WHERE role='web' AND name='port'"),
        TIMEOUT,
        what="the web port",
    )
    wait_until(
        lambda: leech.scalar("SELECT count(*) FROM holdings") == 2, TIMEOUT, what="the catalog"
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        csrf = client.get("/").text.split('data-csrf="', 1)[1].split('"', 1)[0]

        def post(verb: str, **form: str) -> dict[str, object]:
            r = client.post(
                f"/{verb}", data={**form, "csrf": csrf}, headers={"Accept": "application/json"}
            )
            assert r.status_code == 200, (verb, r.status_code, r.text)
            return dict(r.json())

        for name in files:
            assert post("download", name=name)["ok"] is True
        sha = hashlib.sha256(files["big.bin"]).hexdigest()
        wait_until(
            lambda: row(leech, "big.bin").get("bytes_done") and gate.holding(sha),
            TIMEOUT,
            what=f"part of big.bin, the rest held ({gate})",
        )
        big = row(leech, "big.bin")
        assert post("pause", id=str(big["id"]))["ok"] is True
        paused = wait_until(
            lambda: (r := row(leech, "big.bin"))["status"] == "paused" and r, TIMEOUT, what="paused"
        )
        assert paused["bytes_done"] == big["bytes_done"] and paused["temp_path"]
        assert os.path.exists(str(paused["temp_path"]))  # its verified chunks stay

        other = row(leech, "other.bin")
        assert post("cancel", id=str(other["id"]))["ok"] is True
        wait_until(
            lambda: row(leech, "other.bin")["status"] == "cancelled", TIMEOUT, what="cancelled"
        )

        assert post("resume", id=str(big["id"]))["ok"] is True
        gate.open()
        wait_until(lambda: row(leech, "big.bin")["status"] == "done", TIMEOUT, what="big.bin done")
        state = client.get("/api/state").json()

    assert (leech.home / "downloads" / "big.bin").read_bytes() == files["big.bin"]
    assert not (leech.home / "downloads" / "other.bin").exists()
    wait_until(
        lambda: not list((leech.home / "temp").glob("*.part")), TIMEOUT, what="no temp file left"
    )
    assert "big.bin" in str(state)
