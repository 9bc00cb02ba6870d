"""bench.py's `torrent` scenario (issue 24): one file from one node over BitTorrent, against
the same file from nginx and over p2pshare's own protocol, in one run.

    python bench/bench.py --only torrent [--size-mib 1024]

A seeder node shares the file and `p2pctl torrent` makes its .torrent (v1, announcing to a
tiny HTTP tracker of the benchmark's own on 127.0.0.1 that names the node: aria2c takes no
peer address on its command line). Then, each once (the run takes minutes): aria2c fetches
it by the .torrent from the node's p2p-torrent (DHT, LPD, PEX off); aria2c fetches it from
nginx (one connection); a leecher node's `p2pctl download big.bin` (p2pshare); and the
leecher's `p2pctl download big.torrent --peer` (its p2p-torrent from the seeder's, the
.torrent's SHA-256 hint taken out); and the same .torrent with its hint, which the
leecher's p2p-torrent takes from the seeder over p2pshare (hints.py). Rows:
MB/s and CPU-seconds per GiB (client + serving side) of each, as ratios to aria2c from nginx.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from httpref import Nginx, installed
from nodes import beside_python, wait_for
from procstat import run_timed, total_cpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from tracker import Tracker  # noqa: E402  (the BitTorrent tests' own)

GIB = 1024 * 1024 * 1024


def aria2c_bt(torrent: Path, out: Path) -> tuple[float, float]:
    """aria2c fetching by a .torrent, the tracker's peer its only source: (wall s, CPU s)."""
    return run_timed(
        [
            "aria2c",
            "-q",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--seed-time=0",
            "--file-allocation=none",
            "--bt-stop-timeout=300",
            "-d",
            str(out),
            str(torrent),
        ]  # fmt: skip
    )


def torrent(bench: Any) -> None:
    """Rows of the `torrent` scenario; skipped with a note without libtorrent or aria2c."""
    from bench import Row, mbps  # bench.py imports this module: import it late
    from p2pshare.services.torrent import load_libtorrent

    have = {"libtorrent": load_libtorrent() is not None, "aria2c": bool(shutil.which("aria2c"))}
    missing = [name for name, ok in have.items() if not ok]
    if missing:
        bench.rows.append(Row("torrent", "-", "skipped", "-", raw={"missing": missing}))
        return
    size, mib = bench.size, bench.size // (1024 * 1024)
    bench.make_big()
    seeder, leech = bench.node("tseed"), bench.node("tleech")
    bench.start(seeder, leech)
    bench.seed([seeder])
    wait_for(lambda: leech.knows("big.bin", 1), 300, "the leecher to learn the file")
    port = int(wait_for(
        lambda: seeder.scalar("SELECT value FROM role_settings WHERE role = 'torrent'"
                              " AND name = 'port'"), 60, "the seeder's p2p-torrent"))  # fmt: skip
    tracker = Tracker(port)
    torrent_file = bench.root / "big.torrent"
    try:
        made = seeder.p2pctl("torrent", "big.bin", "-o", str(torrent_file), "--tracker",
                             tracker.url)  # fmt: skip
        if made.returncode:
            raise RuntimeError(f"p2pctl torrent: {made.stderr.strip()}")
        wait_for(
            lambda: "seeding 1" in str(seeder.scalar(
                "SELECT detail FROM heartbeats WHERE role = 'torrent'")), 60, "seeding",
        )  # fmt: skip
        out = bench.root / "bt.out"
        before = seeder.cpu_seconds("torrent")
        bt_s, bt_client = aria2c_bt(torrent_file, out)
        bt_server = seeder.cpu_seconds("torrent") - before
        if subprocess.run(["cmp", str(bench.big), str(out / "big.bin")]).returncode:
            raise RuntimeError("aria2c's BitTorrent copy differs from the original")
        shutil.rmtree(out)
    finally:
        tracker.close()
    http = None
    if installed("aria2c"):
        with Nginx(bench.big.parent, bench.root / "nginx-torrent") as web:
            http = web.fetch("aria2c", "big.bin", bench.root / "http.out")
    own = bench.download(leech, "big.bin", ((leech, "downloader"), (seeder, "server")))
    bench.verify(leech, "big.bin")
    leech.forget_download("big.bin")
    # The .torrent carries big.bin's SHA-256 (services/torrent/hints.py), and the leecher
    # sees the seeder offer it over p2pshare: without the hint, this row stays BitTorrent.
    plain = bench.root / "plain.torrent"
    plain.write_bytes(without_hint(torrent_file.read_bytes()))
    via_bt = bench_torrent_download(bench, leech, seeder, plain, port)
    bench.verify(leech, "big.bin")
    leech.forget_download("big.bin")
    via_hint = bench_torrent_download(bench, leech, seeder, torrent_file, None)
    bench.verify(leech, "big.bin")

    def per_gib(cpu: float) -> float:
        return cpu * GIB / size

    ref_s = http.seconds if http else None
    ref_cpu = per_gib(http.client_cpu + http.server_cpu) if http else None
    label = f"torrent, {mib} MiB, one run"
    rows = [
        ("aria2c by BitTorrent from p2p-torrent", bt_s, bt_client + bt_server,
         f"aria2c {per_gib(bt_client):.2f} + p2p-torrent {per_gib(bt_server):.2f}"),
        ("`p2pctl download big.bin` (p2pshare)", own.seconds, own.cpu[0] + own.cpu[1],
         f"downloader {per_gib(own.cpu[0]):.2f} + server {per_gib(own.cpu[1]):.2f}"),
        ("`p2pctl download big.torrent --peer` (p2p-torrent to p2p-torrent)", via_bt[0],
         via_bt[1] + via_bt[2],
         f"leech {per_gib(via_bt[1]):.2f} (hashing it for the index too) + seed "
         f"{per_gib(via_bt[2]):.2f}"),
        ("`p2pctl download big.torrent` with its SHA-256 hint (from the p2pshare peer)",
         via_hint[0], via_hint[1] + via_hint[2],
         f"leech p2p-torrent {per_gib(via_hint[1]):.2f} (the torrent's SHA-1 proof too) + "
         f"seed server {per_gib(via_hint[2]):.2f}"),
    ]  # fmt: skip
    for what, seconds, cpu, split in rows:
        speed = f"{mbps(size, seconds):.0f} MB/s"
        cpu_text = f"{per_gib(cpu):.2f} CPU-s/GiB ({split})"
        if ref_s is None or ref_cpu is None:
            bench.rows.append(Row(f"{label}: {what}", f"{speed}, {cpu_text}", "no nginx", "-"))
            continue
        bench.rows.append(
            Row(
                f"{label}: {what} vs aria2c from nginx",
                f"{speed}, {cpu_text}",
                f"{mbps(size, ref_s):.0f} MB/s, {ref_cpu:.2f} CPU-s/GiB",
                f"{ref_s / seconds:.2f}x speed, {per_gib(cpu) / ref_cpu:.2f}x CPU",
                goal="reference row (issue 24 item 6)",
                raw={
                    "seconds": seconds,
                    "cpu_s": cpu,
                    "ref_seconds": ref_s,
                    "ref_cpu_per_gib": ref_cpu,
                },
            )  # fmt: skip
        )


def without_hint(metainfo: bytes) -> bytes:
    """The .torrent without its p2pshare SHA-256 hint (the same info-hash)."""
    from p2pshare.services.torrent.hints import HINT_KEY
    from p2pshare.services.torrent.metainfo import bdecode, bencode

    top, _ = bdecode(metainfo)
    assert isinstance(top, dict)
    top.pop(HINT_KEY, None)
    return bencode(top)


def bench_torrent_download(
    bench: Any, leech: Any, seeder: Any, torrent_file: Path, port: int | None
) -> tuple[float, float, float]:
    """The leecher's `p2pctl download big.torrent [--peer]` to its exit: (wall s, leech
    p2p-torrent CPU s, seeder CPU s: its p2p-torrent with --peer, else its server, which
    serves the hinted file over p2pshare)."""
    pids = [leech.role_pid("torrent"), seeder.role_pid("torrent" if port else "server")]
    before = total_cpu(pids[:1]), total_cpu(pids[1:])
    peer = ["--peer", f"127.0.0.1:{port}"] if port else []
    try:
        wall, _ = run_timed(
            [beside_python("p2pctl"), "download", str(torrent_file), *peer], env=leech.env
        )
    except subprocess.CalledProcessError:
        row = leech.sql("SELECT id, status, reason FROM downloads ORDER BY id DESC LIMIT 1")
        log = (leech.home / "logs" / "torrent.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"p2pctl download {torrent_file.name} failed: {row}\n{log}") from None
    status = leech.scalar("SELECT status FROM downloads ORDER BY id DESC LIMIT 1")
    if status != "done":
        raise RuntimeError(f"the torrent download ended {status}")
    return wall, total_cpu(pids[:1]) - before[0], total_cpu(pids[1:]) - before[1]
