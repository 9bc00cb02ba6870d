"""Issue 22's `biglan` scenario: a node on a big LAN, as 1,000 machines wake at once.

    python bench/biglan.py [--peers 1000] [--files 20] [--size-mib 256] [--steady 65]
                           [--tmp-dir /dev/shm]

N simulated peers (tests/integration/simlan.py, one child process speaking the node's
own wire format on loopback: UDP announcements to 127.255.255.255 on the nodes' UDP
port, each peer's catalog and manifests over TCP on 127.0.0.1) with F files each (one
they all share, F - 1 of their own) all announce within 2 s, and again a moment later
(a real node answers the newcomers it hears), then every 60 s, each at its own phase.
Two real nodes with the node's defaults run under supervisord (bench/nodes.py): a
seeder sharing a 256 MiB file and a leecher. The seeder stands for another machine,
which would hear the storm on its own CPU: its listener is stopped once the leecher
knows the file, so only the leecher hears the storm and fetches the catalogs. The
leecher downloads the file with `p2pctl download` as a user types it three times
before the storm and three times once it has recorded the storm (quiet), and over and
over from the storm's first datagram until it has recorded every offer (storm).

Printed, as a table, with issue 22's goals met or missed:
- seconds from the storm's start until the leecher's `peers` holds all N, and until
  `holdings` holds all N x F offers;
- catalogs fetched per peer and announced version (counted by the simulated peers),
  after the storm and after one steady round;
- the download's MB/s and the downloader's CPU-seconds per GiB, storm against quiet;
- `p2pctl files --json` and `p2pctl status --json` wall seconds on the leecher (medians
  after the storm; status also taken every second during it, its slowest), against
  `python -c 'import click, tabulate'` measured alike;
- the oldest heartbeat of any role seen during the storm (p2pctl calls a role dead past
  10 s), the listener's CPU-seconds for the storm and for one steady minute, the database
  size, and the UDP and catalog bytes the simulated LAN sent;
- where the CPU went, by process (CpuSplit), in the storm and in a download storm vs
  quiet: the simulated LAN's apart from the node's, since on a real LAN those peers'
  CPU is on other machines; and a download's phases (queued, picked up, finished).
bench/bench.py runs it as `--only biglan` (then `--biglan-peers` sets N).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goalrow import ScenarioRow  # noqa: E402
from nodes import CONF, ROLES, BenchNode, beside_python, start_nodes, wait_for  # noqa: E402
from procstat import TICKS, cpu_seconds, run_timed  # noqa: E402

HERE = Path(__file__).resolve().parent
SIMLAN = HERE.parent / "tests" / "integration" / "simlan.py"
MIB = 1024 * 1024
GIB = 1024 * MIB
SIZE = 256 * MIB
PEERS = 1000
FILES = 20
QUIET_REPS = 3
CLI_REPS = 3
STEADY_SECONDS = 65.0  # from the storm's start: one steady round (at 60 s) included
ROUND_SECONDS = 60.0  # simlan.py's announcement interval (the node's default)
STATUS_EVERY = 1.0  # `p2pctl status --json` during the storm
WATCH_EVERY = 0.05  # polling the leecher's tables
ALIVE_WITHIN = 10.0  # db/roles.py: a role silent longer is reported dead
REFERENCE = ["-c", "import click, tabulate"]
# Issue 22's goals: key -> (text, comparison, threshold).
GOALS: dict[str, tuple[str, str, float]] = {
    "peers": ("all peers in `peers` <= 5 s after the storm began", "<=", 5.0),
    "offers": ("all offers in `holdings` <= 10 s", "<=", 10.0),
    "fetches": ("catalogs fetched: one per peer and version", "<=", 1.0),
    "download": ("download during the storm >= 0.8x quiet", ">=", 0.8),
    "files": ("`p2pctl files --json` <= 1.0 s", "<=", 1.0),
    "status": ("`p2pctl status --json` <= 0.5 s", "<=", 0.5),
    "alive": ("no role reported dead (oldest heartbeat <= 10 s)", "<=", ALIVE_WITHIN),
}


class LanRow(ScenarioRow):
    GOALS = GOALS


Cpu = dict[str, float]  # process (e.g. "listener", "simulated LAN") -> CPU-seconds


@dataclass
class Download:
    """One `p2pctl download` of the big file, as measured."""

    started: float  # wall clock
    mbps: float
    cpu_per_gib: float  # the downloader's
    waited: float  # seconds the downloader and the seeder's server waited for a CPU
    cpu: Cpu  # CPU-seconds of every process watched (CpuSplit), over the download
    # From the downloads row: queued -> picked up by the downloader -> finished; and
    # `p2pctl download`'s own wall seconds (queued by it, exits when it sees the end).
    pickup: float = 0.0
    transfer: float = 0.0
    wall: float = 0.0


class CpuSplit:
    """CPU-seconds of every process on the machine that takes part: the leecher's roles
    (from its heartbeats) and its supervisord, the seeder's server, the simulated LAN and
    `p2pctl download`."""

    def __init__(self, leech: BenchNode, seeder: BenchNode, sim_pid: int) -> None:
        self.pids = {role: int(pid) for role, pid in leech.sql("SELECT role, pid FROM heartbeats")}
        if leech.proc is not None:  # it writes every role's log lines to their files
            self.pids["supervisord"] = leech.proc.pid
        self.pids["seeder's server"] = seeder.role_pid("server")
        self.pids["simulated LAN"] = sim_pid

    def now(self) -> Cpu:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = cpu_seconds(pid)
        return out

    @staticmethod
    def since(before: Cpu, after: Cpu) -> Cpu:
        return {k: after[k] - before[k] for k in before if k in after}


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU-seconds of each live thread of a process, by thread id (what py-spy shows)."""
    out = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                fields = text[text.rindex(")") + 2 :].split()
                out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def mean_cpu(rounds: list[Cpu]) -> Cpu:
    keys = {k for r in rounds for k in r}
    return {k: sum(r.get(k, 0.0) for r in rounds) / max(len(rounds), 1) for k in keys}


def cpu_text(cpu: Cpu, top: int = 6) -> str:
    """The largest shares, as `listener 2.10, simulated LAN 1.50, ...` (CPU-seconds)."""
    big = sorted(cpu.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v:.2f}" for k, v in big if v >= 0.005) or "-"


class SimLanProcess:
    """tests/integration/simlan.py as a child process, driven line by line."""

    def __init__(self, peers: int, files: int, udp_port: int) -> None:
        args = [sys.executable, str(SIMLAN), "--udp-port", str(udp_port)]
        args += ["--peers", str(peers), "--files", str(files)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.peers = self.offers = self.catalog_bytes = 0

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simlan.py exited ({self.proc.wait()})")
        return line.strip()

    def _say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def ready(self) -> None:
        _, peers, offers, catalog_bytes = self._line().split()
        self.peers, self.offers, self.catalog_bytes = int(peers), int(offers), int(catalog_bytes)

    def go(self) -> float:
        self._say("go")
        return float(self._line().split()[1])

    def stats(self) -> dict[str, Any]:
        self._say("stats")
        return dict(json.loads(self._line()))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._say("stop")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class Watch(threading.Thread):
    """Polls the leecher during the storm: when all peers and all offers were recorded,
    the oldest heartbeat seen, and `p2pctl status --json` every STATUS_EVERY seconds."""

    def __init__(
        self, node: BenchNode, peers: int, offers: int, began: float, split: CpuSplit
    ) -> None:
        super().__init__(daemon=True)
        self.node, self.peers, self.offers, self.began = node, peers, offers, began
        self.split = split
        self.cpu_at_done: Cpu = {}  # every process's CPU-seconds when all offers were recorded
        self.conn: sqlite3.Connection | None = None
        self.peers_at: float | None = None
        self.offers_at: float | None = None
        self.oldest_beat = 0.0
        self.status_seconds: list[float] = []
        self.stop = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        next_status = time.time()
        while not self.stop.is_set():
            now = time.time()
            with contextlib.suppress(sqlite3.Error, OSError):  # retried on the next tick
                self._look(now)
            if self.offers_at is None and now >= next_status:
                self.status_seconds.append(
                    run_timed(ctl(self.node, "status", "--json"), self.node.env)[0]
                )
                next_status = time.time() + STATUS_EVERY
            self.stop.wait(WATCH_EVERY)
        if self.conn is not None:
            self.conn.close()

    def _look(self, now: float) -> None:
        if self.conn is None:  # one connection, read-only, kept for the whole storm
            self.conn = sqlite3.connect(f"file:{self.node.home / 'p2p.db'}?mode=ro", uri=True)
        beats = self.conn.execute("SELECT role, beat_at FROM heartbeats").fetchall()
        ages = [now - at for role, at in beats if role in ROLES]
        if ages:
            self.oldest_beat = max(self.oldest_beat, *ages)
        if self.peers_at is None:
            n = self.conn.execute("SELECT count(*) FROM peers").fetchone()[0]
            if n >= self.peers:
                self.peers_at = time.time() - self.began
        if self.peers_at is not None and self.offers_at is None:
            n = self.conn.execute("SELECT count(*) FROM holdings").fetchone()[0]
            if n >= self.offers:
                self.offers_at = time.time() - self.began
                self.cpu_at_done = self.split.now()
                self.done.set()


class RunQueueWait(threading.Thread):
    """Seconds the threads of some processes spent runnable but not running (waiting for a
    CPU), from /proc/PID/task/TID/schedstat sampled every SAMPLE_EVERY: what separates
    a download slowed by a busy CPU from one slowed by waiting on a lock (a thread
    asleep in SQLite's busy handler is not on a run queue). A thread that ends between
    two samples loses at most its last SAMPLE_EVERY."""

    SAMPLE_EVERY = 0.02

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.first: dict[tuple[int, int], int] = {}
        self.last: dict[tuple[int, int], int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self._sample()
            self.stop.wait(self.SAMPLE_EVERY)
        self._sample()

    def _sample(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        text = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text()
                        waited = int(text.split()[1])
                        self.first.setdefault((pid, int(tid)), waited)
                        self.last[(pid, int(tid))] = waited

    def seconds(self) -> float:
        self.stop.set()
        self.join(5)
        return sum(self.last[k] - self.first[k] for k in self.last) / 1e9


def supervisorctl(node: BenchNode, *args: str) -> None:
    subprocess.run(
        [beside_python("supervisorctl"), "-c", str(CONF), *args],
        env=node.env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def ctl(node: BenchNode, *args: str) -> list[str]:
    return [*node.pin, beside_python("p2pctl"), *args]


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for i in range(size // MIB):
            f.write(block[i % 97 :] + block[: i % 97])  # distinct chunks, cheaply


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def db_bytes(node: BenchNode) -> int:
    return sum(p.stat().st_size for p in node.home.glob("p2p.db*") if p.is_file())


class BigLan:
    def __init__(self, bench: Any, peers: int, files: int, size: int, steady: float) -> None:
        self.bench, self.peers, self.files, self.size, self.steady = (
            bench,
            peers,
            files,
            size,
            steady,
        )
        self.rows: list[LanRow] = []
        self.split: CpuSplit | None = None
        self.storm_cpu: Cpu = {}
        self.profile: Path | None = None  # py-spy the listener and the simulated LAN in the storm

    def row(
        self, what: str, measured: str, reference: str = "-", ratio: str = "-", **kw: Any
    ) -> None:
        goal = GOALS[kw["scenario_goal"]][0] if kw.get("scenario_goal") else kw.pop("goal", "")
        row = LanRow(f"biglan: {what}", measured, reference, ratio, goal=goal, **kw)
        self.rows.append(row)
        self.bench.rows.append(row)

    def download(self, leech: BenchNode, seeder: BenchNode, big: Path) -> Download:
        """One `p2pctl download big.bin`, measured."""
        assert self.split is not None
        started = time.time()
        waits = RunQueueWait([leech.role_pid("downloader"), seeder.role_pid("server")])
        waits.start()
        before = self.split.now()
        # Not settled: the write count is not shown here, and 2.5 s of waiting after each
        # download left room for one download in a 3-4 s storm; back to back, a few fit.
        got = self.bench.download(
            leech, big.name, ((leech, "downloader"),), size=self.size, settle=False
        )
        cpu = CpuSplit.since(before, self.split.now())
        cpu["p2pctl download"] = got.p2pctl_cpu
        waited = waits.seconds()
        self.bench.verify(leech, big.name, big)
        leech.forget_download(big.name)
        mbps = self.size / got.seconds / 1e6
        requested, picked, finished = leech.sql(
            "SELECT requested_at, started_at, finished_at FROM downloads ORDER BY id DESC LIMIT 1"
        )[0]
        return Download(started, mbps, got.cpu[0] * GIB / self.size, waited, cpu,
                        picked - requested, finished - picked, got.seconds)  # fmt: skip

    def run(self) -> None:
        root = Path(self.bench.root) / "biglan"
        big = root / "data" / "big.bin"
        write_random(big, self.size)
        seeder = BenchNode(root, "lan-seed", self.bench.udp)
        leech = BenchNode(root, "lan-leech", self.bench.udp)
        self.bench.nodes += [seeder, leech]
        os.link(big, seeder.share / big.name)
        t0 = time.perf_counter()
        sim = SimLanProcess(self.peers, self.files, self.bench.udp)
        try:
            sim.ready()
            print(
                f"simulated {sim.peers} peers, {sim.offers} offers "
                f"in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            start_nodes(seeder, leech)
            wait_for(lambda: leech.knows(big.name), 60, "the leecher to know big.bin")
            # The seeder stands for another machine: on a real LAN it hears the storm on
            # its own CPU. Here its listener would take the leecher's cores (and fetch every
            # catalog too), so it stops; the leecher alone hears the storm.
            supervisorctl(seeder, "stop", "p2p:listener")
            self.split = CpuSplit(leech, seeder, sim.proc.pid)
            quiet = [self.download(leech, seeder, big) for _ in range(QUIET_REPS)]
            self.storm(sim, seeder, leech, big, quiet)
        finally:
            sim.close()
            for n in (seeder, leech):
                n.stop()

    def storm(self, sim: SimLanProcess, seeder: BenchNode, leech: BenchNode, big: Path,
              quiet: list[Download]) -> None:  # fmt: skip
        assert self.split is not None
        listener_cpu = leech.cpu_seconds("listener")
        # Whole tables counted, against what the leecher held before the storm (the
        # seeder and its file): a plain count(*) is what the watch can afford every
        # WATCH_EVERY without taking CPU from the download it measures.
        peers = sim.peers + leech.scalar("SELECT count(*) FROM peers")
        offers = sim.offers + leech.scalar("SELECT count(*) FROM holdings")
        cpu_before = self.split.now()
        began = sim.go()
        watch = Watch(leech, peers, offers, began, self.split)
        watch.start()
        spies = self.spy(leech, sim)
        threads = thread_cpu(leech.role_pid("listener"))
        stormy = []
        while not watch.done.is_set() and time.time() - began < 300:
            stormy.append(self.download(leech, seeder, big))
        wait_for(watch.done.is_set, 600, "the leecher to record every offer", 0.1)
        self.unspy(spies)
        if self.profile is not None:  # the listener's CPU-s in the storm, by thread id
            after = thread_cpu(leech.role_pid("listener"))
            split = {t: round(after[t] - threads.get(t, 0.0), 2) for t in after}
            (self.profile / "listener-threads.json").write_text(json.dumps(split, indent=1))
        watch.stop.set()
        watch.join(30)
        storm_cpu = leech.cpu_seconds("listener") - listener_cpu
        self.storm_cpu = CpuSplit.since(cpu_before, watch.cpu_at_done)
        after_storm = sim.stats()
        size_after = db_bytes(leech)
        files_out = leech.p2pctl("files", "--json").stdout
        ref = [run_timed([sys.executable, *REFERENCE], leech.env)[0] for _ in range(CLI_REPS)]
        files = [run_timed(ctl(leech, "files", "--json"), leech.env)[0] for _ in range(CLI_REPS)]
        status = [run_timed(ctl(leech, "status", "--json"), leech.env)[0] for _ in range(CLI_REPS)]
        # Quiet again, once the storm is recorded (the steady rounds come later): the
        # reference taken on both sides of the storm, so load from elsewhere that comes or
        # goes meanwhile (a shared machine) weighs on it as on the storm's downloads.
        quiet = quiet + [self.download(leech, seeder, big) for _ in range(QUIET_REPS)]
        # One steady round: every peer announces once more, at the same catalog version
        # (the first that begins after the storm was recorded: 10,000 peers take longer
        # than a round).
        steady_end = began + self.steady
        while steady_end - 15 < time.time():
            steady_end += ROUND_SECONDS
        wait_for(lambda: time.time() >= steady_end - 15, ROUND_SECONDS + 60, "the steady round",
                 0.5)  # fmt: skip
        steady_cpu = leech.cpu_seconds("listener")
        wait_for(lambda: time.time() >= steady_end, 30, "the steady round's end", 0.5)
        steady_cpu = leech.cpu_seconds("listener") - steady_cpu
        after_steady = sim.stats()
        self.rows_for(sim, watch, quiet, stormy, (storm_cpu, steady_cpu),
                      (after_storm, after_steady), (ref, files, status, len(files_out)),
                      size_after)  # fmt: skip

    def rows_for(
        self,
        sim: SimLanProcess,
        watch: Watch,
        quiet: list[Download],
        stormy: list[Download],
        cpu: tuple[float, float],
        stats: tuple[dict[str, Any], dict[str, Any]],
        cli: tuple[list[float], list[float], list[float], int],
        size_after: int,
    ) -> None:
        n, offers = sim.peers, sim.offers
        self.row(f"{n} peers: storm -> all in `peers`", f"{watch.peers_at:.2f} s",
                 scenario_goal="peers", value=watch.peers_at)  # fmt: skip
        self.row(f"{offers} offers: storm -> all in `holdings`", f"{watch.offers_at:.2f} s",
                 scenario_goal="offers", value=watch.offers_at)  # fmt: skip
        for label, s in (("after the storm", stats[0]), ("after one steady round", stats[1])):
            per = s["catalog_fetches"] / max(n, 1)
            self.row(
                f"catalogs fetched {label}",
                f"{s['catalog_fetches']} for {n} peers at one version ({per:.2f} a peer; "
                f"most for one peer {s['max_fetches_per_peer']})",
                scenario_goal="fetches",
                value=float(s["max_fetches_per_peer"]),
                raw=s,
            )
        q = median([r.mbps for r in quiet])
        st = median([r.mbps for r in stormy])
        qcpu, scpu = median([r.cpu_per_gib for r in quiet]), median([r.cpu_per_gib for r in stormy])
        self.row(
            f"{self.size // MIB} MiB download during the storm vs quiet",
            f"{st:.0f} MB/s ({len(stormy)} downloads; meanwhile the simulated LAN took "
            f"{mean_cpu([r.cpu for r in stormy]).get('simulated LAN', 0.0):.2f} CPU-s a download)",
            f"{q:.0f} MB/s quiet ({len(quiet)}: half before the storm, half after)",
            f"{st / q:.2f}x",
            scenario_goal="download",
            value=st / q,
            raw={"quiet": [asdict(r) for r in quiet], "storm": [asdict(r) for r in stormy]},
        )
        qwait, swait = median([r.waited for r in quiet]), median([r.waited for r in stormy])
        self.row(
            "seconds the downloader and the seeder's server waited for a CPU, a download",
            f"{swait:.2f} s in the storm",
            f"{qwait:.2f} s quiet",
            f"+{swait - qwait:.2f} s",
            goal=f"download wall +{self.size / st / 1e6 - self.size / q / 1e6:.2f} s",
        )
        phases = [
            (median([r.pickup for r in rs]), median([r.transfer for r in rs]),
             median([r.wall - r.pickup - r.transfer for r in rs]))
            for rs in (stormy, quiet)
        ]  # fmt: skip
        self.row(
            "a download's seconds: queued -> picked up / -> finished / p2pctl's rest",
            " / ".join(f"{x:.3f}" for x in phases[0]) + " s in the storm",
            " / ".join(f"{x:.3f}" for x in phases[1]) + " s quiet",
        )
        self.row(
            "downloader CPU-s/GiB during the storm vs quiet",
            f"{scpu:.2f} s/GiB",
            f"{qcpu:.2f} s/GiB",
            f"{scpu / qcpu:.2f}x",
        )
        ref, files, status, out_bytes = cli
        r = median(ref)
        self.row(f"`p2pctl files --json` ({out_bytes / 1e6:.1f} MB out), after the storm",
                 f"{median(files):.3f} s", f"{r:.3f} s (python -c 'import click, tabulate')",
                 f"{median(files) / r:.2f}x", scenario_goal="files",
                 value=median(files))  # fmt: skip
        self.row("`p2pctl status --json`, after the storm", f"{median(status):.3f} s",
                 f"{r:.3f} s", f"{median(status) / r:.2f}x", scenario_goal="status",
                 value=median(status))  # fmt: skip
        slowest = max(watch.status_seconds, default=float("nan"))
        self.row(f"`p2pctl status --json` during the storm, slowest of {len(watch.status_seconds)}",
                 f"{slowest:.3f} s", f"{r:.3f} s", f"{slowest / r:.2f}x", scenario_goal="status",
                 value=slowest)  # fmt: skip
        self.row("oldest heartbeat of any role during the storm", f"{watch.oldest_beat:.1f} s",
                 scenario_goal="alive", value=watch.oldest_beat)  # fmt: skip
        self.row("listener CPU-s: the storm / a steady round", f"{cpu[0]:.2f} / {cpu[1]:.2f} s",
                 goal=f"{n / 60:.0f} announcements/s steady")  # fmt: skip
        self.cpu_rows(quiet, stormy, watch.offers_at or float("nan"))
        udp = stats[1]["announcements"]
        self.row("database after the storm (p2p.db + WAL)", f"{size_after / MIB:.1f} MiB",
                 goal=f"{size_after / max(offers, 1):.0f} bytes an offer")  # fmt: skip
        lan = sim.catalog_bytes
        self.row("simulated LAN sent", f"{udp} announcements, catalogs {lan / MIB:.1f} MiB "
                 f"({lan / max(n, 1):.0f} B a peer)")  # fmt: skip

    def cpu_rows(self, quiet: list[Download], stormy: list[Download], storm_seconds: float) -> None:
        """Where the CPU went: in the storm (from its first datagram until every offer was
        recorded), and in a download quiet and stormy (each from `p2pctl download` to its
        exit), by process; the simulated LAN stands for 1,000 other machines, whose CPU a
        real LAN does not take from this one."""
        storm = self.storm_cpu
        sim = storm.get("simulated LAN", 0.0)
        others = ("simulated LAN", "seeder's server")
        node = sum(v for k, v in storm.items() if k not in others)
        self.row(f"CPU-s in the storm ({storm_seconds:.1f} s): simulated LAN / this node",
                 f"{sim:.2f} / {node:.2f} s", goal=f"two cores: {2 * storm_seconds:.1f} CPU-s",
                 raw=storm)  # fmt: skip
        self.row("CPU-s in the storm by process", cpu_text(storm), raw=storm)
        q, st = mean_cpu([r.cpu for r in quiet]), mean_cpu([r.cpu for r in stormy])
        self.row("CPU-s a download by process, storm vs quiet", cpu_text(st), cpu_text(q),
                 raw={"quiet": q, "storm": st})  # fmt: skip

    def spy(self, leech: BenchNode, sim: SimLanProcess) -> list[subprocess.Popen[bytes]]:
        """With --profile: py-spy the leecher's listener and the simulated LAN (raw stacks)."""
        if self.profile is None:
            return []
        self.profile.mkdir(parents=True, exist_ok=True)
        targets = {"listener": leech.role_pid("listener"), "simlan": sim.proc.pid}
        # --gil: only the thread holding the GIL is sampled, so a thread waiting for a CPU
        # (runnable, which py-spy otherwise counts as busy) is not mistaken for work.
        record = ["py-spy", "record", "--nonblocking", "--gil", "--threads", "--format", "raw"]
        return [
            subprocess.Popen(
                [*record, "-o", str(self.profile / f"{name}.txt"), "--pid", str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in targets.items()
        ]

    @staticmethod
    def unspy(spies: list[subprocess.Popen[bytes]]) -> None:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def goal_table(rows: list[Any]) -> list[list[str]]:
    out = []
    for row in rows:
        if getattr(row, "scenario_goal", ""):
            out.append(
                [
                    row.goal,
                    row.p2pshare if row.ratio == "-" else f"{row.p2pshare} ({row.ratio})",
                    row.met,
                ]
            )
    return out


def biglan(bench: Any) -> None:
    """bench.py's `biglan` scenario."""
    peers = getattr(bench, "biglan_peers", PEERS)
    run = BigLan(bench, peers, FILES, SIZE, STEADY_SECONDS)
    run.run()
    print(tabulate(goal_table(run.rows), headers=["goal (issue 22)", "measured", ""]))


def main() -> None:
    from bench import default_tmp, run_alone  # bench.py imports this module: import it late

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=PEERS)
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--size-mib", type=int, default=SIZE // MIB)
    parser.add_argument(
        "--steady", type=float, default=STEADY_SECONDS, help="seconds from the storm's start"
    )
    parser.add_argument("--tmp-dir", type=Path, default=default_tmp())
    parser.add_argument("--out", type=Path, default=HERE / "results" / "biglan.json")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the listener and the simulated LAN during the storm "
        "into this folder (raw stacks; costs CPU, so not for the figures)"
    )  # fmt: skip
    args = parser.parse_args()
    if args.peers < 1 or args.files < 1 or args.size_mib < 1:
        parser.error("--peers, --files and --size-mib must be at least 1")

    def storm(bench: Any) -> None:
        run = BigLan(bench, args.peers, args.files, args.size_mib * MIB, max(args.steady, 20.0))
        run.profile = args.profile
        run.run()

    run_alone(
        "p2pbench-lan", args.tmp_dir, storm, goal_table, "goal (issue 22)", args.out,
        size=args.size_mib * MIB,
    )  # fmt: skip


if __name__ == "__main__":
    main()
