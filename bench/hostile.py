"""Issue 37's first goal, measured once: one hostile peer offering 20 made-up contents of
2^20 chunks each (manifests that prove themselves) for 60 s, while honest 64 MiB
downloads run on the victim (the median of three, against the median of three before).

Reports the victim's database growth (p2p.db and its WAL, goal <= 64 MB), every role's
peak RSS (<= 150 MB), role restarts (0), "database is locked" lines in its logs (0), and
the honest download's rate against its rate on a quiet network (>= 0.8x). The victim's
user asks for every hostile content by name (the way such a manifest is fetched: a
download needs it).

    python bench/hostile.py [--seconds 60] [--chunks 1048576] [--tmp-dir DIR]

`--chunks 131072` makes each made-up content just fit P2P_PEER_MANIFEST_ROWS, so the
victim stores one of them before the budget refuses the rest (the worst a peer can do).

Loopback only: nodes bind 127.0.0.1 and announce to 127.255.255.255.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from goalrow import ScenarioRow
from nodes import BenchNode, free_udp_port, start_nodes, wait_for
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from fakepeer import BOMB_CHUNKS, FakePeer, hostile_fields, make_bomb  # noqa: E402

MIB = 1024 * 1024
MB = 1_000_000
HONEST_SIZE = 64 * MIB
BOMBS = 20
REPS = 3  # honest downloads, quiet and under attack: the median of each
GOALS: dict[str, tuple[str, str, float]] = {
    "db": ("victim database growth <= 64 MB", "<=", 64.0),
    "rss": ("every role's peak RSS <= 150 MB", "<=", 150.0),
    "restarts": ("no role restarts", "<=", 0.0),
    "locked": ('no "database is locked" line in any log', "<=", 0.0),
    "rate": ("honest 64 MiB download under attack >= 0.8x quiet", ">=", 0.8),
}


class HostileRow(ScenarioRow):
    GOALS = GOALS


def db_bytes(node: BenchNode) -> int:
    return sum(
        p.stat().st_size for p in (node.home / "p2p.db", node.home / "p2p.db-wal") if p.exists()
    )


def timed_download(node: BenchNode, name: str) -> float:
    """`p2pctl download NAME` to its end; returns the MB/s."""
    started = time.monotonic()
    done = node.p2pctl("download", name)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"download {name} failed: {done.stdout}{done.stderr}")
    return HONEST_SIZE / MB / seconds


def median_rate(node: BenchNode) -> float:
    """The median MB/s of REPS downloads of honest.bin, each removed after."""
    rates = []
    for _ in range(REPS):
        rates.append(timed_download(node, "honest.bin"))
        node.forget_download("honest.bin")
    return statistics.median(rates)


def role_pids(node: BenchNode) -> dict[str, int]:
    return {role: pid for role, pid in node.sql("SELECT role, pid FROM heartbeats")}


def locked_lines(node: BenchNode) -> int:
    return sum(
        path.read_text(errors="replace").count("database is locked")
        for path in (node.home / "logs").glob("*.log")
    )


def peak_rss(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def run(root: Path, seconds: float, chunks: int) -> dict[str, Any]:
    udp = free_udp_port()
    seeder = BenchNode(root, "seeder", udp)
    victim = BenchNode(root, "victim", udp, P2P_WAIT_TIMEOUT=3600)
    with open(seeder.share / "honest.bin", "wb") as fh:
        fh.write(os.urandom(HONEST_SIZE))
    try:
        start_nodes(seeder, victim)
        wait_for(lambda: victim.knows("honest.bin"), 120, "the victim to learn honest.bin")
        quiet = median_rate(victim)
        pids = role_pids(victim)

        bombs = [make_bomb(f"bomb-{i:02d}.bin", chunks) for i in range(BOMBS)]
        mallory = FakePeer(**hostile_fields(bombs, udp))
        before = db_bytes(victim)
        growth = [0]
        rss = {role: 0.0 for role in pids}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                growth[0] = max(growth[0], db_bytes(victim) - before)
                for role, pid in pids.items():
                    rss[role] = max(rss[role], peak_rss(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        attack_started = time.monotonic()
        mallory.start()
        try:
            wait_for(lambda: _held(victim, mallory.username) >= BOMBS, 60, "the hostile catalog")
            for bomb in bombs:
                victim.p2pctl("download", bomb.name, "--no-wait")
            attacked = median_rate(victim)
            left = seconds - (time.monotonic() - attack_started)
            if left > 0:
                time.sleep(left)  # the attack's full length, as the goal states it
        finally:
            stop.set()
            sampler.join()
            mallory.close()
        restarts = sum(1 for role, pid in role_pids(victim).items() if pids.get(role) != pid)
        rows = victim.scalar("SELECT count(*) FROM chunks")
        try:
            record = victim.sql("SELECT over_budget FROM peers WHERE username = 'mallory'")
        except Exception:  # a node before budgets per peer
            record = [("(no budgets)",)]
        locked = locked_lines(victim)
    finally:
        for node in (victim, seeder):
            node.stop()
    return {
        "growth_mb": growth[0] / MB,
        "rss_mb": rss,
        "restarts": restarts,
        "locked": locked,
        "quiet_mbps": quiet,
        "attacked_mbps": attacked,
        "chunk_rows": rows,
        "recorded": record[0][0] if record else "(gone)",
        "manifests_sent": mallory.count("manifest"),  # its every offer is a bomb
        "load": os.getloadavg(),
    }


def goal_rows(figures: dict[str, Any]) -> list[HostileRow]:
    """The goal's figures as bench.py's rows."""
    rss: dict[str, float] = figures["rss_mb"]
    worst = max(rss, key=lambda role: rss[role])
    ratio = figures["attacked_mbps"] / figures["quiet_mbps"]
    return [
        HostileRow("hostile", f"{figures['growth_mb']:.1f} MB", "", "",
                   scenario_goal="db", value=figures["growth_mb"]),
        HostileRow("hostile", f"{rss[worst]:.0f} MB ({worst})", "", "",
                   scenario_goal="rss", value=rss[worst]),
        HostileRow("hostile", str(figures["restarts"]), "", "",
                   scenario_goal="restarts", value=figures["restarts"]),
        HostileRow("hostile", str(figures["locked"]), "", "",
                   scenario_goal="locked", value=figures["locked"]),
        HostileRow("hostile", f"{figures['attacked_mbps']:.1f} MB/s",
                   f"{figures['quiet_mbps']:.1f} MB/s quiet", f"{ratio:.2f}x",
                   scenario_goal="rate", value=ratio),
    ]  # fmt: skip


def table(figures: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = [
        [GOALS[r.scenario_goal][0], r.p2pshare, r.reference, r.ratio, r.met]
        for r in goal_rows(figures)
    ]
    rows += [[f"peak RSS {role}", f"{mb:.0f} MB"] for role, mb in figures["rss_mb"].items()]
    rows += [
        ["chunk rows stored", figures["chunk_rows"]],
        ["hostile peer recorded", figures["recorded"]],
        ["manifest requests answered", figures["manifests_sent"]],
        ["load average (1, 5, 15 min)", " ".join(f"{x:.2f}" for x in figures["load"])],
    ]
    return rows


def hostile(bench: Any) -> None:
    """bench.py's `hostile` scenario: the goal's run, 2^20-chunk contents for 60 s."""
    root = bench.root / "hostile"
    root.mkdir(parents=True, exist_ok=True)
    figures = run(root, 60.0, BOMB_CHUNKS)
    bench.rows.extend(goal_rows(figures))
    print(tabulate(table(figures), headers=["goal (issue 37)", "measured", "quiet", "ratio", ""]))


def _held(node: BenchNode, username: str) -> int:
    return int(
        node.scalar(
            "SELECT count(*) FROM holdings h JOIN peers p ON p.id = h.peer_id WHERE p.username = ?",
            (username,),
        )
        or 0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chunks", type=int, default=BOMB_CHUNKS, help="per made-up content")
    parser.add_argument("--tmp-dir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="p2p-hostile-", dir=args.tmp_dir))
    try:
        figures = run(root, args.seconds, args.chunks)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(tabulate(table(figures), headers=["goal (issue 37)", "measured", "quiet", "ratio", ""]))


if __name__ == "__main__":
    main()
