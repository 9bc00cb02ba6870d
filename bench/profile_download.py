"""Where a verified download spends its CPU: py-spy on the downloader of a real node.

    python bench/profile_download.py [--size-mib 1024] [--root /dev/shm/p2p-prof]

Starts a seeder and a leecher under their own supervisord on loopback, downloads one
file, and samples the leecher's downloader role (or the seeder's server, --role server)
with `py-spy record --gil` for the whole transfer: only the thread holding the GIL, so
the samples show where Python itself spends CPU. Prints each function's share of the
samples (own time) and writes the raw stacks to bench/results/profile.txt.
Needs py-spy (pip install py-spy) and root, or ptrace permission.

    python bench/profile_download.py --perf

samples the same role with `perf record -g -p PID` instead (kernel and C stacks of every
thread: the copies, the locks, libcrypto), and prints `perf report`'s own-time shares by
symbol; the data stays in bench/results/perf.data. Needs Debian's linux-perf.

    python bench/profile_download.py --network-key KEY

profiles a keyed pair, so every byte goes over TLS 1.3 (the `encrypted` scenario's path).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodes import BenchNode, wait_for  # noqa: E402
from procstat import cpu_seconds, warm  # noqa: E402

MIB = 1024 * 1024
HERE = Path(__file__).resolve().parent


def summarize(collapsed: Path, top: int = 15) -> list[tuple[str, float]]:
    """Own-time share per function from py-spy's collapsed stacks ("a;b;c count")."""
    own: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        leaf = next((f for f in reversed(frames) if not f.startswith("process ")), frames[-1])
        own[leaf.split(" (")[0] + " " + leaf.split("/")[-1].rstrip(")")] += int(count)
    total = sum(own.values()) or 1
    return [(name, n / total) for name, n in own.most_common(top)]


def perf_summary(data: Path, top: int = 25) -> str:
    """perf report's own-time (self) share by symbol, the top lines only."""
    report = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--no-children",
            "--sort",
            "sym",
            "--stdio",
            "-g",
            "none",
        ],
        capture_output=True,
        text=True,
    ).stdout
    lines = [ln for ln in report.splitlines() if ln.strip() and not ln.startswith("#")]
    return "\n".join(lines[:top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="sample every thread, also those in GIL-free calls (hashing, recv, pwrite)",
    )
    parser.add_argument(
        "--role", choices=["downloader", "server"], default="downloader", help="whose CPU"
    )
    parser.add_argument(
        "--perf", action="store_true", help="perf record -g (kernel + C) instead of py-spy"
    )
    parser.add_argument(
        "--network-key", default=None, help="a keyed pair: the transfer runs over TLS"
    )
    args = parser.parse_args()
    keyed = {"P2P_NETWORK_KEY": args.network_key} if args.network_key else {}
    root = args.root or Path(tempfile.mkdtemp(prefix="p2p-prof-", dir="/dev/shm"))
    port = 20000 + os.getpid() % 10000
    seed = BenchNode(root, "seed", port, **keyed)
    leech = BenchNode(root, "leech", port, **keyed)
    try:
        big = seed.share / "big.bin"
        with open(big, "wb") as fh:
            for _ in range(args.size_mib // 64 or 1):
                fh.write(os.urandom(64 * MIB))
        for node in (seed, leech):
            node.start()
        for node in (seed, leech):
            node.wait_ready()
        wait_for(lambda: leech.knows("big.bin"), 120, "the leecher to learn the file")
        out = HERE / "results" / ("perf.data" if args.perf else "profile.txt")
        out.parent.mkdir(exist_ok=True)
        pid = str((leech if args.role == "downloader" else seed).role_pid(args.role))
        spy = subprocess.Popen(
            ["perf", "record", "-g", "-p", pid, "-o", str(out)]
            if args.perf
            else [
                "py-spy",
                "record",
                "--pid",
                pid,
                "--format",
                "raw",
                "--output",
                str(out),
                "--rate",
                "200",
                "--threads",
                "--nonblocking",
                # --gil: only the thread holding the GIL, where Python itself spends CPU
                *([] if args.all_threads else ["--gil"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        warm(leech.home, args.size_mib * MIB)  # as bench.py does: see procstat.warm
        cpu_before = cpu_seconds(int(pid))
        started = time.monotonic()
        done = leech.p2pctl("download", "big.bin")
        took = time.monotonic() - started
        cpu = cpu_seconds(int(pid)) - cpu_before
        spy.send_signal(2)
        spy.wait(timeout=30)
        print(
            f"p2pctl download: exit {done.returncode} in {took:.2f} s; "
            f"{args.role} {cpu:.2f} CPU-s ({cpu * 1024 / args.size_mib:.2f} s/GiB, profiler's "
            "own overhead included)"
        )
        if args.perf:
            print(perf_summary(out))
            return
        for name, share in summarize(out):
            print(f"{share * 100:5.1f}%  {name}")
    finally:
        for node in (leech, seed):
            node.stop()
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
