"""Issue 34 goal 4: the first index of a large share against sha256sum, and a rescan's cost.

    python bench/indexspeed.py [--files 20000] [--folders 500] [--tmp-dir /dev/shm]
                               [--reps 2] [--role] [--idle 20]

Builds N files of 200 B-2 KiB (sizes and contents from Random(SEED): the same tree every
run) spread over FOLDERS folders on tmpfs, older than the indexer's settle time. Then,
alternating, `reps` times each:

- `find SHARE -type f -exec sha256sum {} +` (wall, and its CPU from RUSAGE_CHILDREN);
- the indexer's first index in this process: ShareIndexer.step() on a new database
  (opened before the clock starts, as the role opens it at start), wall and CPU (its
  writer process's included);
- an unchanged rescan: step() again over the same tree (wall and CPU).

Printed: the best of each and the ratio sha256sum/index (the goal is >= 0.5). With
--role, the real server role once (p2p-server, loopback only, its own P2P_HOME): from its
"listening on" line (start-up done, the index thread starts) to its "index: N added" line,
then its CPU over --idle seconds of rescans of the unchanged share (a share of a core).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodes import LOOPBACK, LOOPBACK_BROADCAST, beside_python  # noqa: E402
from procstat import cpu_seconds, peak_rss_mb  # noqa: E402

SEED = 34  # the number
MIN_SIZE, MAX_SIZE = 200, 2048


def make_tree(share: Path, count: int, folders: int) -> None:
    """count files of MIN_SIZE..MAX_SIZE random bytes, round-robin over `folders` folders."""
    rng = random.Random(SEED)
    for f in range(folders):
        (share / f"d{f:03d}").mkdir(parents=True, exist_ok=True)
    past = time.time() - 10  # settled: the indexer hashes them at its first look
    for i in range(count):
        path = share / f"d{i % folders:03d}" / f"f{i:07d}.bin"
        path.write_bytes(rng.randbytes(rng.randint(MIN_SIZE, MAX_SIZE)))
        os.utime(path, (past, past))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    """This process's CPU and that of its children waited for (the indexer's writer process,
    which ends with each pass)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + children_cpu()


def time_sha256sum(share: Path) -> tuple[float, float]:
    cpu0, started = children_cpu(), time.perf_counter()
    subprocess.run(
        ["find", str(share), "-type", "f", "-exec", "sha256sum", "{}", "+"],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started, children_cpu() - cpu0


def time_indexer(top: Path, share: Path, rep: int, count: int) -> dict[str, float]:
    """First index and one unchanged rescan, in this process, on a new database."""
    from p2pshare.db.engine import Database
    from p2pshare.services.server.indexer import ShareIndexer
    from p2pshare.services.settings import load_settings

    home = top / f"home-{rep}"
    home.mkdir()
    env = {"P2P_HOME": str(home), "P2P_SHARE_DIR": str(share), "P2P_BROADCAST": LOOPBACK_BROADCAST}
    settings = load_settings(env)
    settings.make_dirs()
    database = Database.open(settings.db_path)
    indexer = ShareIndexer(database, settings)
    try:
        cpu0, started = self_cpu(), time.perf_counter()
        stats = indexer.step()
        first = time.perf_counter() - started, self_cpu() - cpu0
        if stats.added != count:
            raise RuntimeError(f"the indexer added {stats.added} of {count} files")
        cpu0, started = self_cpu(), time.perf_counter()
        stats = indexer.step()
        again = time.perf_counter() - started, self_cpu() - cpu0
        if stats.unchanged != count or stats.touched:
            raise RuntimeError(f"an unchanged rescan saw {stats}")
    finally:
        database.close()
        shutil.rmtree(home, ignore_errors=True)
    return {
        "index_s": first[0],
        "index_cpu": first[1],
        "rescan_s": again[0],
        "rescan_cpu": again[1],
    }


def run_role(top: Path, share: Path, count: int, idle: float) -> dict[str, float]:
    """The real p2p-server: its first index from "listening on", then --idle s of rescans."""
    home = top / "home-role"
    env = {
        **os.environ,
        "P2P_HOME": str(home),
        "P2P_SHARE_DIR": str(share),
        "P2P_BIND": LOOPBACK,
        "P2P_TCP_PORT": "0",
        "P2P_BROADCAST": LOOPBACK_BROADCAST,
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [beside_python("p2p-server")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: dict[str, float] = {}
    done, changed = threading.Event(), threading.Event()
    added = re.compile(r"index: (\d+) added, (\d+) changed")
    later = [0, 0]  # added, changed after the first index

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter()
            if "listening on" in line:
                seen.setdefault("listening", now)
            match = added.search(line)
            if not match:
                continue
            if not done.is_set():
                if int(match.group(1)) >= count:
                    seen["indexed"] = now
                    done.set()
                continue
            later[0] += int(match.group(1))
            later[1] += int(match.group(2))
            if later[0] >= 1 and later[1] >= 1:
                seen["changed"] = now
                changed.set()

    threading.Thread(target=read, daemon=True).start()
    spawned = time.perf_counter()
    try:
        if not done.wait(timeout=600):
            raise RuntimeError("the server did not index the share within 600 s")
        indexed_cpu = cpu_seconds(proc.pid)
        time.sleep(idle)
        idle_cpu = cpu_seconds(proc.pid) - indexed_cpu
        # One file added and one rewritten: seen through the watch, or the next rescan.
        before = cpu_seconds(proc.pid)
        wrote = time.perf_counter()
        (share / "d000" / "new.bin").write_bytes(b"a new file")
        (share / "d001" / "f0000001.bin").write_bytes(b"rewritten")
        if not changed.wait(timeout=600):
            raise RuntimeError("the server did not see the change within 600 s")
        change_s = seen["changed"] - wrote
        time.sleep(0.5)  # its last writes and log lines
        change_cpu = cpu_seconds(proc.pid) - before
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return {
        "role_startup_s": seen["listening"] - spawned,
        "role_index_s": seen["indexed"] - seen["listening"],
        "role_cpu_to_indexed": indexed_cpu,
        "role_idle_share": idle_cpu / idle,
        "role_peak_rss_mb": rss,
        "role_change_s": change_s,
        "role_change_cpu": change_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--folders", type=int, default=500)
    parser.add_argument("--tmp-dir", default="/dev/shm")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--role", action="store_true", help="also time the real p2p-server")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle rescans")
    args = parser.parse_args()
    logging.basicConfig(filename=os.devnull, level=logging.INFO)  # the role logs; its cost counts
    top = Path(tempfile.mkdtemp(prefix="p2p-indexspeed-", dir=args.tmp_dir))
    try:
        share = top / "share"
        made = time.perf_counter()
        make_tree(share, args.files, args.folders)
        print(f"{args.files} files in {args.folders} folders: {time.perf_counter() - made:.1f} s")
        ref: list[tuple[float, float]] = []
        ours: list[dict[str, float]] = []
        for rep in range(args.reps):
            ref.append(time_sha256sum(share))
            ours.append(time_indexer(top, share, rep, args.files))
        sums = min(ref)
        best = {key: min(run[key] for run in ours) for key in ours[0]}
        n = args.files
        print(f"sha256sum:      {sums[0]:6.2f} s  {sums[1]:6.2f} CPU-s  {n / sums[0]:8.0f} files/s")
        print(
            f"first index:    {best['index_s']:6.2f} s  {best['index_cpu']:6.2f} CPU-s  "
            f"{n / best['index_s']:8.0f} files/s  ratio {sums[0] / best['index_s']:.2f}x "
            "(goal >= 0.5x)"
        )
        print(
            f"rescan:         {best['rescan_s']:6.2f} s  {best['rescan_cpu']:6.2f} CPU-s  "
            f"{best['rescan_cpu'] / n * 1e6:.1f} CPU-us per file"
        )
        if args.role:
            role = run_role(top, share, args.files, args.idle)
            print(
                f"p2p-server:     {role['role_index_s']:6.2f} s from 'listening on' to indexed "
                f"(start-up {role['role_startup_s']:.2f} s, {role['role_cpu_to_indexed']:.2f} "
                f"CPU-s)  ratio {sums[0] / role['role_index_s']:.2f}x; idle rescans "
                f"{role['role_idle_share'] * 100:.1f}% of a core over {args.idle:g} s; "
                f"peak RSS {role['role_peak_rss_mb']:.0f} MB"
            )
            print(
                f"one file added + one rewritten: indexed {role['role_change_s']:.2f} s after "
                f"the write (0.5 s of it the settle time), {role['role_change_cpu']:.3f} CPU-s"
            )
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
