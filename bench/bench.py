"""p2pshare against the tools a user would pick instead, measured in one run, as ratios.

    python bench/bench.py [--size-mib 1024] [--reps 3] [--only NAME ...]
                          [--tmp-dir /dev/shm] [--disk-dir /var/tmp] [--pin-cpu 0]

Every node runs under its own supervisord with its own P2P_HOME, on loopback
(P2P_BIND=127.0.0.1, P2P_BROADCAST=127.255.255.255), in a folder on tmpfs
(--tmp-dir); the `disk` scenario repeats the one-seeder transfer in a folder on a
real disk (--disk-dir). References are measured in the same run: a bare
sendfile -> recv_into copy always; curl and aria2c from nginx, sha256sum, and a
libtorrent swarm when those are installed (skipped with a note otherwise;
docs/benchmark.md says how to install them). CPU-seconds and peak RSS come from /proc. Prints
a table, then issue 10's goals met or missed, and writes the raw figures to
bench/results/latest.json. Nothing here asserts: a missed goal is a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from biglan import biglan  # noqa: E402
from bigshare import bigshare  # noqa: E402
from goalrow import GoalRow  # noqa: E402
from hostile import hostile  # noqa: E402
from httpref import CLIENTS, Fetch, Nginx, fetch_mirrors, installed  # noqa: E402
from many import many  # noqa: E402
from nodes import ROLES, BenchNode, beside_python, free_udp_port, start_nodes, wait_for  # noqa: E402
from procstat import cached_fraction, evict, fs_type, run_timed, warm  # noqa: E402
from recvpath import expected_states, run_once  # noqa: E402
from refcopy import fetch  # noqa: E402
from torrent_transfer import torrent  # noqa: E402

from p2pshare.db import roles as dbroles  # noqa: E402
from p2pshare.services.settings import chunk_size_for  # noqa: E402

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
GIB = 1024 * MIB
RATE_LIMIT = 32 * MIB  # per seeder in the rate-limited scenario
IDLE_SETTLE_SECONDS = 3.0
IDLE_SECONDS = 20.0
CATALOG_FILES = 10_000
SMALL_SIZE = 1 * MIB  # the `small` scenario: what a user waits for beyond the transfer
SMALL_REPS_MIN = 5
# Plain HTTP downloads from nginx a user might use instead, and the goal against each.
HTTP_GOALS = {"curl": ">= 1.0x", "aria2c": "reference"}
# The goals (issue 21's, and issue 10's it kept): key -> (text, comparison, threshold,
# scenario that measures it). Speeds are `p2pctl download NAME` as a user types it,
# following its progress bar, start to exit.
GOALS: dict[str, tuple[str, str, float, str]] = {
    "one": ("one seeder, `p2pctl download` wall >= 1.0x curl from nginx", ">=", 1.0, "transfer"),
    "pinned": ("pinned to one core: >= 0.7x curl pinned the same way", ">=", 0.7, "pinned"),
    "cpu": ("CPU/GiB downloader + seeder's server <= 1.5x curl + nginx", "<=", 1.5, "transfer"),
    "floor": ("CPU/GiB downloader <= 1.25x bench/recvpath.py's floor", "<=", 1.25, "transfer"),
    "three": ("three seeders >= 1.5x one", ">=", 1.5, "transfer"),
    "lt3": ("three seeders >= 2x libtorrent with three seeders", ">=", 2.0, "transfer"),
    "index": ("first index >= 0.9x sha256sum", ">=", 0.9, "index"),
    "rss": ("peak RSS < 100 MB for each role", "<", 100.0, "transfer"),
    "small": ("1 MiB `p2pctl download` within 0.3 s of curl", "<=", 0.3, "small"),
    # Issue 12's, as issue 21 keeps it: encryption must not lose ground.
    "tls": ("encrypted one seeder >= 0.9x curl over HTTPS from nginx", ">=", 0.9, "encrypted"),
}


class Row(GoalRow):
    """A row of bench.py's own scenarios; `goal_key` names one of GOALS."""

    GOALS = GOALS


@dataclass
class Transfer:
    """Repeated one-seeder downloads of one file: `seconds` is what the user waits
    (`p2pctl download NAME`, start to exit), `row_seconds` the node's own row
    (finished_at - requested_at)."""

    seconds: list[float] = field(default_factory=list)
    row_seconds: list[float] = field(default_factory=list)
    p2pctl_cpu: list[float] = field(default_factory=list)
    downloader_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    writes: list[int] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)  # source in page cache at each start

    def cpu_per_gib(self, size: int) -> tuple[float, float, float]:
        """Medians of (downloader + server, downloader, server) CPU-seconds per GiB."""
        both = [d + s for d, s in zip(self.downloader_cpu, self.server_cpu, strict=True)]
        return tuple(  # type: ignore[return-value]
            median(xs) * GIB / size for xs in (both, self.downloader_cpu, self.server_cpu)
        )


@dataclass
class Fetched:
    seconds: float  # `p2pctl download NAME` start to exit
    row_seconds: float  # the row's finished_at - requested_at
    p2pctl_cpu: float
    writes: int
    cpu: list[float]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def cpu_count() -> int:
    """The CPUs this benchmark (and so every node it starts) may run on."""
    return len(os.sched_getaffinity(0))


def http_cpu_per_gib(fetches: list[Fetch], size: int) -> tuple[float, float, float]:
    """Medians of (client + nginx, client, nginx) CPU-seconds per GiB."""
    both = [f.client_cpu + f.server_cpu for f in fetches]
    client = [f.client_cpu for f in fetches]
    server = [f.server_cpu for f in fetches]
    return tuple(median(xs) * GIB / size for xs in (both, client, server))  # type: ignore[return-value]


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 64 * MIB)
            fh.write(os.urandom(n))
            left -= n


def where(folder: Path) -> str:
    """`tmpfs` or e.g. `ext4 /var/tmp`, for a scenario's name."""
    kind = fs_type(folder)
    return kind if kind == "tmpfs" else f"{kind} {folder}"


class Bench:
    def __init__(self, root: Path, size: int, reps: int, disk_dir: Path, pin_cpu: str) -> None:
        self.root = root
        self.size = size
        self.reps = reps
        self.disk_dir = disk_dir
        self.pin_cpu = pin_cpu
        self.udp = free_udp_port()
        self.nodes: list[BenchNode] = []
        self.rows: list[Row] = []
        self.big = root / "data" / "big.bin"
        self.cleanup: list[Path] = []

    # ------------------------------------------------------------ helpers

    def node(
        self, label: str, root: Path | None = None, cpus: str | None = None, **settings: object
    ) -> BenchNode:
        n = BenchNode(root or self.root, label, self.udp, cpus, **settings)
        self.nodes.append(n)
        return n

    def start(self, *nodes: BenchNode) -> None:
        start_nodes(*nodes)

    def stop_all(self) -> None:
        for n in self.nodes:
            n.stop()
        self.nodes.clear()

    def make_big(self) -> None:
        if not (self.big.exists() and self.big.stat().st_size == self.size):
            write_random(self.big, self.size)

    def seed(self, nodes: list[BenchNode], name: str = "big.bin", src: Path | None = None) -> None:
        """Hard-link the test file into each seeder's share folder (no extra disk)."""
        for n in nodes:
            os.link(src or self.big, n.share / name)

    def download(
        self,
        node: BenchNode,
        name: str,
        watch: tuple[tuple[BenchNode, str], ...] = (),
        size: int | None = None,
        *,
        settle: bool = True,
    ) -> Fetched:
        """`p2pctl download NAME` as a user types it (following its progress bar) to its
        exit: its wall seconds and CPU, the row's own seconds, db writes, and the
        CPU-seconds each watched (node, role) used meanwhile. settle=False skips the wait
        for one more heartbeat (then the write count may miss the last batch)."""
        warm(node.home, size or self.size)
        writes_before = node.db_writes()
        cpu_before = [n.cpu_seconds(role) for n, role in watch]
        try:
            wall, p2pctl_cpu = run_timed([*node.pin, beside_python("p2pctl"), "download", name],
                                         env=node.env)  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"p2pctl download {name} exited {exc.returncode}") from None
        cpu = [n.cpu_seconds(role) - b for (n, role), b in zip(watch, cpu_before, strict=True)]
        status, requested, done, reason = node.sql(
            "SELECT status, requested_at, finished_at, reason FROM downloads "
            "ORDER BY id DESC LIMIT 1"
        )[0]
        if status != "done":
            raise RuntimeError(f"download {status}: {reason}")
        if settle:
            time.sleep(2.5)  # one heartbeat, so the write count includes the last batch
        return Fetched(wall, done - requested, p2pctl_cpu, node.db_writes() - writes_before, cpu)

    def verify(self, node: BenchNode, name: str, original: Path | None = None) -> None:
        got = subprocess.run(["cmp", str(original or self.big), str(node.downloads / name)])
        if got.returncode:
            raise RuntimeError("downloaded file differs from the original")

    def one_seeder(
        self,
        seeder: BenchNode,
        leech: BenchNode,
        src: Path,
        cpus: str | None = None,
        cold: bool = False,
        clients: tuple[str, ...] = CLIENTS,
        tls: bool = False,
    ) -> tuple[Transfer, dict[str, list[Fetch]]]:
        """self.reps rounds of: leech downloads src (linked into seeder's share as src.name),
        then each installed HTTP client fetches it from nginx (pinned to cpus like the nodes).

        Interleaved, so a burst of load elsewhere costs both alike; the idle nodes stay up
        meanwhile (their housekeeping is a few hundredths of a core). cold: drop src from
        the page cache before each download and each fetch (read from disk). tls: nginx
        serves HTTPS (TLS 1.3).
        """
        out = Transfer()
        http: dict[str, list[Fetch]] = {}
        usable = [c for c in clients if installed(c)]
        dest = src.parent.parent / "http.out"

        def before() -> None:
            if cold:
                evict(src)
            warm(dest.parent, src.stat().st_size)

        with contextlib.ExitStack() as stack:
            web = None
            if usable:
                conf = src.parent.parent / ("nginx-tls" if tls else "nginx")
                web = stack.enter_context(Nginx(src.parent, conf, cpus, tls=tls))
            for _ in range(self.reps):
                if cold:
                    evict(src)
                out.cached.append(cached_fraction(src))
                got = self.download(leech, src.name, ((leech, "downloader"), (seeder, "server")))
                self.verify(leech, src.name, src)
                out.seconds.append(got.seconds)
                out.row_seconds.append(got.row_seconds)
                out.p2pctl_cpu.append(got.p2pctl_cpu)
                out.writes.append(got.writes)
                out.downloader_cpu.append(got.cpu[0])
                out.server_cpu.append(got.cpu[1])
                leech.forget_download(src.name)
                for client in usable:
                    assert web is not None
                    http.setdefault(client, []).append(web.fetch(client, src.name, dest, before))
        return out, http

    def speed_and_cpu_rows(
        self,
        label: str,
        t: Transfer,
        http: dict[str, list[Fetch]],
        goals: dict[str, str],
        via: str = "from nginx",
        cores: int | None = None,
    ) -> None:
        """Rows comparing a one-seeder Transfer with curl (+ aria2c) from nginx: MB/s and
        CPU-seconds per GiB. goals maps "speed"/"cpu" to a GOALS key or a goal text.
        `cores`: the CPUs both nodes may use (all of them, or the one they are pinned to),
        for the ceiling row."""
        rate = mbps(self.size, median(t.seconds))
        both, dl, srv = t.cpu_per_gib(self.size)
        cpu_text = f"{both:.2f} s/GiB (dl {dl:.2f}, srv {srv:.2f})"
        for client in ("curl", *(c for c in http if c != "curl")):
            speed_goal = goals.get("speed", "") if client == "curl" else "reference"
            fetches = http.get(client)
            if not fetches:
                self.rows.append(
                    Row.skipped(
                        f"{label} vs {client} {via}",
                        f"nginx or {client} not installed",
                        GOALS[speed_goal][0] if speed_goal in GOALS else speed_goal,
                    )
                )
                continue
            secs = [f.seconds for f in fetches]
            ratio = median(secs) / median(t.seconds)
            self.rows.append(
                Row(
                    f"{label} vs {client} {via}",
                    f"{rate:.0f} MB/s",
                    f"{mbps(self.size, median(secs)):.0f} MB/s",
                    f"{ratio:.2f}x",
                    goal=GOALS[speed_goal][0] if speed_goal in GOALS else speed_goal,
                    raw={"p2pshare_s": t.seconds, f"{client}_s": secs, "cached": t.cached},
                    goal_key=speed_goal if speed_goal in GOALS else "",
                    value=ratio,
                )
            )
            if client != "curl":
                continue
            ref, ref_client, ref_server = http_cpu_per_gib(fetches, self.size)
            cpu_goal = goals.get("cpu", "")
            self.rows.append(
                Row(
                    f"{label}: CPU per GiB, downloader + seeder's server vs curl + nginx",
                    cpu_text,
                    f"{ref:.2f} s/GiB (curl {ref_client:.2f}, nginx {ref_server:.2f})",
                    f"{both / ref:.2f}x CPU",
                    goal=GOALS[cpu_goal][0] if cpu_goal in GOALS else cpu_goal,
                    raw={
                        "downloader_cpu_s": t.downloader_cpu,
                        "server_cpu_s": t.server_cpu,
                        "curl_cpu_s": [f.client_cpu for f in fetches],
                        "nginx_cpu_s": [f.server_cpu for f in fetches],
                    },
                    goal_key=cpu_goal if cpu_goal in GOALS else "",
                    value=both / ref,
                )
            )
            self._ceiling_row(label, both, mbps(self.size, median(secs)), cores or cpu_count())

    def _ceiling_row(self, label: str, cpu_per_gib: float, curl_rate: float, cores: int) -> None:
        """The fastest the node could go here if every core it may use did nothing but the
        downloader's and the server's work (at their measured CPU per GiB), against curl's
        measured rate: a speed goal above this ratio cannot be met on this machine, and
        the gap below it is what start-up, p2pctl, the other roles and idle cores cost."""
        ceiling = cores / cpu_per_gib * GIB / 1e6
        self.rows.append(
            Row(
                f"{label}: ceiling, {cores} core(s) busy only with dl + srv",
                f"{ceiling:.0f} MB/s",
                f"curl {curl_rate:.0f} MB/s",
                f"{ceiling / curl_rate:.2f}x",
                goal="report: the most the speed ratio can be on this machine",
                raw={"cores": cores, "cpu_s_per_gib": cpu_per_gib},
            )
        )

    # ------------------------------------------------------------ scenarios

    def transfer(self) -> None:
        """One and three seeders of the big file on tmpfs; references: sendfile copy, curl
        and aria2c from nginx (MB/s and CPU per GiB), libtorrent; peak RSS of every role."""
        self.make_big()
        seeders = [self.node(f"seed{i}") for i in range(3)]
        leech = self.node("leech")
        self.start(*seeders, leech)
        self.seed(seeders[:1])
        wait_for(lambda: leech.knows("big.bin", 1), 120, "the leecher to learn the file")
        one, http = self.one_seeder(seeders[0], leech, self.big)
        rss_dl, rss_srv = leech.peak_rss_mb("downloader"), seeders[0].peak_rss_mb("server")
        ref = [self._refcopy() for _ in range(self.reps)]
        label = f"1 seeder, {self.size // MIB} MiB ({where(self.root.parent)})"
        one_rate = mbps(self.size, median(one.seconds))
        self.rows.append(
            Row(
                f"{label}, `p2pctl download` vs sendfile->recv_into copy",
                f"{one_rate:.0f} MB/s",
                f"{mbps(self.size, median(ref)):.0f} MB/s",
                f"{median(ref) / median(one.seconds):.2f}x",
                f"dl {rss_dl:.0f} MB, srv {rss_srv:.0f} MB",
                ">= 0.8x; RSS < 100 MB",
                {"p2pshare_s": one.seconds, "reference_s": ref},
            )
        )
        self.speed_and_cpu_rows(label, one, http, {"speed": "one", "cpu": "cpu"})
        self.rows.append(
            Row(
                f"downloader db write transactions per {self.size // MIB} MiB",
                f"{median(one.writes):.0f}",
                "-",
                "-",
                "",
                "a few hundred at most",
                {"writes": one.writes},
            )
        )
        self._floor_row(one)
        self._row_vs_wall_row(label, one)
        self.seed(seeders[1:])
        wait_for(lambda: leech.knows("big.bin", 3), 120, "the leecher to see three seeders")
        three, aria3 = [], []
        for _ in range(self.reps):
            three.append(self.download(leech, "big.bin").seconds)
            self.verify(leech, "big.bin")
            leech.forget_download("big.bin")
            aria3 += self._aria2c_mirrors(3)
        ratio = median(one.seconds) / median(three)
        aria1 = [f.seconds for f in http.get("aria2c", [])]
        mirrors = (
            f"; aria2c, 3 nginx mirrors vs 1: {median(aria1) / median(aria3):.2f}x "
            f"({mbps(self.size, median(aria3)):.0f} MB/s)"
            if aria3 and aria1
            else ""
        )
        self.rows.append(
            Row(
                f"3 seeders, {self.size // MIB} MiB vs 1 seeder",
                f"{mbps(self.size, median(three)):.0f} MB/s",
                f"{one_rate:.0f} MB/s{mirrors}",
                f"{ratio:.2f}x",
                goal=GOALS["three"][0],
                raw={"three_s": three, "aria2c_3_mirrors_s": aria3, "aria2c_1_s": aria1},
                goal_key="three",
                value=ratio,
            )
        )
        # At one seeder's CPU per GiB, what 1.5x one seeder's rate would take.
        need = 1.5 * one_rate * 1e6 / GIB * one.cpu_per_gib(self.size)[0]
        self.rows.append(
            Row(
                "3 seeders: cores that 1.5x one seeder would take at its CPU per GiB",
                f"{need:.2f} cores",
                f"{cpu_count()} here",
                "-",
                goal="report: above the cores here, three seeders on loopback cannot reach 1.5x",
                raw={"cores_needed": need},
            )
        )
        lt3 = self._libtorrent(3, 0)
        if lt3:
            ratio = median(lt3) / median(three)
            self.rows.append(
                Row(
                    f"3 seeders, {self.size // MIB} MiB vs libtorrent 3 seeders",
                    f"{mbps(self.size, median(three)):.0f} MB/s",
                    f"{mbps(self.size, median(lt3)):.0f} MB/s",
                    f"{ratio:.2f}x",
                    goal=GOALS["lt3"][0],
                    raw={"libtorrent_s": lt3},
                    goal_key="lt3",
                    value=ratio,
                )
            )
        else:
            self.rows.append(
                Row.skipped(
                    "3 seeders vs libtorrent", "python libtorrent not installed", GOALS["lt3"][0]
                )
            )
        self._rss_row([leech, *seeders])
        self.stop_all()

    def _floor_row(self, one: Transfer, folder: Path | None = None) -> None:
        """The downloader's CPU per GiB against bench/recvpath.py's floor in this run: one
        process receiving the same file over loopback, hashing each chunk from its
        predecessor's state and writing it in 256 KiB pieces (the cheapest method there)
        into `folder` (where the node's downloads went; tmpfs by default), memory warmed
        the same way before each."""
        chunk = chunk_size_for(self.size)
        expected = expected_states(self.big, self.size, chunk)
        dest = (folder or self.root) / "floor.part"
        runs = []
        for _ in range(self.reps):
            warm(self.root, self.size)
            runs.append(run_once("pwrite/256k", True, self.big, dest, self.size, chunk, expected))
        floor = median([r["cpu"] for r in runs]) * GIB / self.size
        floor_rate = median([self.size / r["wall"] / 1e6 for r in runs])
        dl = one.cpu_per_gib(self.size)[1]
        self.rows.append(
            Row(
                f"downloader CPU per GiB vs bench/recvpath.py floor ({chunk // MIB} MiB chunks"
                + (f", {where(folder)})" if folder else ")"),
                f"{dl:.2f} s/GiB",
                f"{floor:.2f} s/GiB ({floor_rate:.0f} MB/s, one thread)",
                f"{dl / floor:.2f}x CPU",
                goal=GOALS["floor"][0],
                raw={
                    "floor_cpu_s": [r["cpu"] for r in runs],
                    "floor_wall_s": [r["wall"] for r in runs],
                },
                goal_key="floor" if folder is None else "",
                value=dl / floor,
            )
        )

    def _row_vs_wall_row(self, label: str, one: Transfer) -> None:
        """What the user waits beyond the node's own row, and what p2pctl itself burns."""
        wall, row = median(one.seconds), median(one.row_seconds)
        self.rows.append(
            Row(
                f"{label}: `p2pctl download` wall vs its row (finished - requested)",
                f"{wall:.2f} s ({mbps(self.size, wall):.0f} MB/s)",
                f"{row:.2f} s ({mbps(self.size, row):.0f} MB/s)",
                f"{wall / row:.2f}x the time",
                goal=f"report; p2pctl itself {median(one.p2pctl_cpu):.2f} CPU-s",
                raw={"row_s": one.row_seconds, "p2pctl_cpu_s": one.p2pctl_cpu},
            )
        )

    def _aria2c_mirrors(self, count: int) -> list[float]:
        """One aria2c fetch of the big file from `count` nginx mirrors of its folder."""
        if not installed("aria2c"):
            return []
        dest = self.root / "mirrors.out"
        with contextlib.ExitStack() as stack:
            webs = [
                stack.enter_context(Nginx(self.big.parent, self.root / f"nginx-m{i}"))
                for i in range(count)
            ]
            return [
                fetch_mirrors(webs, self.big.name, dest, lambda: warm(self.root, self.size)).seconds
            ]

    def encrypted(self) -> None:
        """One keyed seeder (TLS 1.3, P2P_ENCRYPT=auto) against curl over HTTPS from nginx
        (TLS 1.3), and against a keyed pair with P2P_ENCRYPT=off, the same file in one run."""
        self.make_big()
        key = {"P2P_NETWORK_KEY": "bench network key 0123"}
        seeder, leech = self.node("tls-seed", **key), self.node("tls-leech", **key)
        clear = [self.node(f"clear-{n}", P2P_ENCRYPT="off", **key) for n in ("seed", "leech")]
        self.start(seeder, leech, *clear)
        self.seed([seeder, clear[0]])
        wait_for(lambda: leech.knows("big.bin", 1), 120, "the TLS leecher to learn the file")
        wait_for(lambda: clear[1].knows("big.bin", 1), 120, "the clear leecher to learn it")
        tls, https = self.one_seeder(seeder, leech, self.big, tls=True)
        plain, _ = self.one_seeder(clear[0], clear[1], self.big, clients=())
        label = f"encrypted, 1 seeder, {self.size // MIB} MiB"
        goals = {"speed": "tls", "cpu": "reported beside it"}
        self.speed_and_cpu_rows(label, tls, https, goals, via="over HTTPS from nginx")
        tls_both = tls.cpu_per_gib(self.size)[0]
        plain_both = plain.cpu_per_gib(self.size)[0]
        self.rows.append(
            Row(
                f"{label} vs p2pshare in clear (MB/s; CPU/GiB dl + srv)",
                f"{mbps(self.size, median(tls.seconds)):.0f} MB/s, {tls_both:.2f} s/GiB",
                f"{mbps(self.size, median(plain.seconds)):.0f} MB/s, {plain_both:.2f} s/GiB",
                f"{median(plain.seconds) / median(tls.seconds):.2f}x, "
                f"{tls_both / plain_both:.2f}x CPU",
                "",
                "reference",
                {"tls_s": tls.seconds, "clear_s": plain.seconds},
            )
        )
        self.stop_all()

    def _rss_row(self, nodes: list[BenchNode]) -> None:
        """Peak RSS (VmHWM) of every role of the leecher and the seeders."""
        rss = {(n.label, r): n.peak_rss_mb(r) for n in nodes for r in ROLES}
        per_role = {r: max(v for (_n, role), v in rss.items() if role == r) for r in ROLES}
        worst = max(per_role.values())
        self.rows.append(
            Row(
                "peak RSS, each role (max over leecher and seeders)",
                f"{worst:.0f} MB",
                "-",
                "-",
                ", ".join(f"{r[:3]} {v:.0f}" for r, v in per_role.items()),
                GOALS["rss"][0],
                {f"{label}/{role}": v for (label, role), v in rss.items()},
                "rss",
                worst,
            )
        )

    def pinned(self) -> None:
        """The one-seeder transfer with nginx, curl and both nodes (supervisord and every
        role) on one core: the stand-in for a small board."""
        cpu = self.pin_cpu
        if not shutil.which("taskset"):
            self.rows.append(
                Row.skipped(
                    "1 seeder pinned to one core", "taskset not installed", GOALS["pinned"][0]
                )
            )
            return
        self.make_big()
        seeder, leech = self.node("pin-seed", cpus=cpu), self.node("pin-leech", cpus=cpu)
        self.start(seeder, leech)
        self.seed([seeder])
        wait_for(lambda: leech.knows("big.bin", 1), 120, "the leecher to learn the file")
        one, http = self.one_seeder(seeder, leech, self.big, cpus=cpu, clients=("curl",))
        self.stop_all()
        label = f"1 seeder, {self.size // MIB} MiB ({where(self.root.parent)}), all on CPU {cpu}"
        self.speed_and_cpu_rows(label, one, http, {"speed": "pinned", "cpu": "report"}, cores=1)

    def disk(self) -> None:
        """The one-seeder transfer in a folder on a real disk, the source dropped from the
        page cache before each run (posix_fadvise DONTNEED, which needs no privileges)."""
        kind = fs_type(self.disk_dir)
        need = 3 * self.size + GIB
        free = shutil.disk_usage(self.disk_dir).free
        if kind == "tmpfs" or free < need:
            why = "is tmpfs" if kind == "tmpfs" else f"has {free // MIB} MiB free of {need // MIB}"
            self.rows.append(Row.skipped("1 seeder on disk", f"{self.disk_dir} {why}"))
            return
        root = Path(tempfile.mkdtemp(prefix="p2pbench-disk", dir=self.disk_dir))
        root.chmod(0o755)  # nginx's workers run as an unprivileged user
        self.cleanup.append(root)
        self.make_big()
        src = root / "data" / "big.bin"
        src.parent.mkdir()
        shutil.copyfile(self.big, src)
        seeder, leech = self.node("disk-seed", root=root), self.node("disk-leech", root=root)
        self.start(seeder, leech)
        self.seed([seeder], src=src)
        wait_for(lambda: leech.knows("big.bin", 1), 120, "the leecher to learn the file")
        one, http = self.one_seeder(seeder, leech, src, cold=True, clients=("curl",))
        self.stop_all()
        label = (
            f"1 seeder, {self.size // MIB} MiB ({where(self.disk_dir)}), "
            f"source {100 * median(one.cached):.0f} % cached"
        )
        self.speed_and_cpu_rows(label, one, http, {"speed": "report", "cpu": "report"})
        self._floor_row(one, root)
        shutil.rmtree(root, ignore_errors=True)

    def index(self) -> None:
        """First index of the big file (the indexer's hash_file, in this process) against
        sha256sum of the same file, alternating, on tmpfs; `openssl sha256` (libcrypto,
        what hashlib uses) as a second reference when installed."""
        from p2pshare.db.index import Stamp
        from p2pshare.services.hashing.files import hash_file
        from p2pshare.services.settings import chunk_size_for

        self.make_big()
        chunk = chunk_size_for(self.size)
        tools = {"sha256sum": ["sha256sum"], "openssl sha256": ["openssl", "sha256", "-r"]}
        tools = {k: v for k, v in tools.items() if shutil.which(v[0])}
        ours: list[float] = []
        theirs: dict[str, list[float]] = {k: [] for k in tools}
        for _ in range(self.reps):
            t0 = time.perf_counter()
            hashed = hash_file(self.big, chunk, expect=Stamp.of(os.stat(self.big)))
            ours.append(time.perf_counter() - t0)
            for tool, cmd in tools.items():
                t0 = time.perf_counter()
                out = subprocess.run(
                    [*cmd, str(self.big)], capture_output=True, text=True, check=True
                )
                theirs[tool].append(time.perf_counter() - t0)
                if out.stdout.split()[0] != hashed.sha256:
                    raise RuntimeError(f"hash_file and {tool} disagree on the file's SHA-256")
        label = (
            f"first index, {self.size // MIB} MiB ({where(self.root.parent)}), "
            f"{chunk // 1024} KiB chunks"
        )
        for tool, times in theirs.items():
            ratio = median(times) / median(ours)
            goal = tool == "sha256sum"
            self.rows.append(
                Row(
                    f"{label}: hash_file vs {tool}",
                    f"{mbps(self.size, median(ours)):.0f} MB/s",
                    f"{mbps(self.size, median(times)):.0f} MB/s",
                    f"{ratio:.2f}x",
                    goal=GOALS["index"][0] if goal else "reference (one libcrypto pass)",
                    raw={"hash_file_s": ours, f"{tool}_s": times, "chunk_size": chunk},
                    goal_key="index" if goal else "",
                    value=ratio,
                )
            )

    def small(self) -> None:
        """What the user waits for a 1 MiB file: `p2pctl download NAME`, start to exit,
        against curl of the same file from nginx and against the node's own row; and
        `p2pctl download --no-wait` (start-up and queueing alone) on other files."""
        reps = max(self.reps, SMALL_REPS_MIN)
        folder = self.root / "small"
        waited = [f"small-{i:02d}.bin" for i in range(reps)]
        queued_only = [f"nowait-{i:02d}.bin" for i in range(reps)]
        for name in (*waited, *queued_only):
            write_random(folder / name, SMALL_SIZE)
        seeder, leech = self.node("small-seed"), self.node("small-leech")
        self.start(seeder, leech)
        for name in (*waited, *queued_only):
            os.link(folder / name, seeder.share / name)
        wait_for(
            lambda: all(leech.knows(n) for n in (*waited, *queued_only)),
            60,
            "the leecher to learn the files",
        )
        p2pctl = beside_python("p2pctl")

        def timed(name: str, *flags: str) -> tuple[float, float, float]:
            """Wall seconds of `p2pctl download NAME`, then the row's finished - started
            and finished - requested once it is done."""
            t0 = time.perf_counter()
            got = subprocess.run(
                [p2pctl, "download", name, *flags], env=leech.env, capture_output=True
            )
            wall = time.perf_counter() - t0
            if got.returncode:
                raise RuntimeError(f"p2pctl download {name}: {got.stderr.decode().strip()}")
            requested, started, finished = wait_for(
                lambda: leech.sql(
                    "SELECT requested_at, started_at, finished_at FROM downloads "
                    "WHERE name = ? AND status = 'done' ORDER BY id DESC LIMIT 1",
                    (name,),
                ),
                60,
                f"{name} to finish",
                0.01,
            )[0]
            self.verify(leech, name, folder / name)
            return wall, finished - started, finished - requested

        # A different file each time, so none is "already here".
        wall, run, queued = zip(*(timed(name) for name in waited), strict=True)
        no_wait = [timed(name, "--no-wait")[0] for name in queued_only]
        self.stop_all()
        curl = []
        if installed("curl"):
            with Nginx(folder, self.root / "nginx-small") as web:
                curl = [web.fetch("curl", n, self.root / "small.out").seconds for n in waited]
        size = f"{SMALL_SIZE // MIB} MiB"
        ms = 1000
        p2p = median(list(wall))
        goal = "report"
        self.rows.append(
            Row(
                f"{size}: `p2pctl download` wall vs curl from nginx",
                f"{p2p * ms:.0f} ms",
                f"{median(curl) * ms:.0f} ms" if curl else "skipped",
                f"+{(p2p - median(curl)) * ms:.0f} ms" if curl else "-",
                goal=GOALS["small"][0],
                raw={"p2pctl_s": wall, "curl_s": curl},
                goal_key="small" if curl else "",
                value=p2p - median(curl) if curl else None,
            )
        )
        self.rows.append(
            Row(
                f"{size}: `p2pctl download` wall vs its row (finished - started)",
                f"{p2p * ms:.0f} ms",
                f"{median(list(run)) * ms:.0f} ms "
                f"(finished - requested {median(list(queued)) * ms:.0f})",
                f"{p2p / median(list(run)):.1f}x the time",
                goal=goal,
                raw={"row_started_s": run, "row_requested_s": queued},
            )
        )
        self.rows.append(
            Row(
                f"{size}: `p2pctl download --no-wait` wall (start-up + queueing)",
                f"{median(no_wait) * ms:.0f} ms",
                f"{p2p * ms:.0f} ms (waiting)",
                f"{median(no_wait) / p2p:.2f}x the time",
                goal=goal,
                raw={"p2pctl_no_wait_s": no_wait},
            )
        )

    def cli(self) -> None:
        """p2pctl's answers on a node that knows 500 peers (bench/cli_timing.py), against
        Python's own start-up with click and tabulate imported, in the same run."""
        from cli_timing import run

        folder = self.root / "cli"
        folder.mkdir()
        figures = run(folder)
        for f in figures:
            if f["command"].startswith("python"):
                continue  # the reference itself
            self.rows.append(
                Row(
                    f"CLI, {f['peers']} peers: {f['command']}",
                    f"{f['median_s'] * 1000:.0f} ms",
                    f"{f['baseline_s'] * 1000:.0f} ms (python -c 'import click, tabulate')",
                    f"{f['ratio']:.2f}x the time",
                    goal="report",
                    raw=f,
                )
            )

    def _refcopy(self) -> float:
        server = subprocess.Popen(
            [sys.executable, str(HERE / "refcopy.py"), "serve", str(self.big)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            dest = self.root / "refcopy.out"
            seconds = fetch(port, self.size, dest)
            dest.unlink()
            return seconds
        finally:
            server.kill()
            server.wait()

    def _libtorrent(self, seeders: int, limit: int, size_file: Path | None = None) -> list[float]:
        try:
            import libtorrent  # noqa: F401
        except ImportError:
            return []
        path = size_file or self.big
        times = []
        for _ in range(self.reps):
            out = subprocess.run(
                [
                    sys.executable,
                    str(HERE / "lt_swarm.py"),
                    str(path),
                    str(seeders),
                    str(limit),
                    str(self.root),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            times.append(float(out.stdout.strip().splitlines()[-1]))
        return times

    def rate_limited(self) -> None:
        """Four seeders each capped at RATE_LIMIT against one such seeder, 256 MiB."""
        size = min(self.size, 256 * MIB)
        self.make_big()
        path = self.root / "data" / "limited.bin"
        with open(self.big, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read(size))
        seeders = [self.node(f"lim{i}", P2P_UPLOAD_LIMIT=RATE_LIMIT) for i in range(4)]
        leech = self.node("limleech")
        self.start(*seeders, leech)
        os.link(path, seeders[0].share / "limited.bin")
        wait_for(lambda: leech.knows("limited.bin", 1), 60, "the leecher to learn the file")
        one = []
        for _ in range(self.reps):
            one.append(self.download(leech, "limited.bin").seconds)
            leech.forget_download("limited.bin")
        for n in seeders[1:]:
            os.link(path, n.share / "limited.bin")
        wait_for(lambda: leech.knows("limited.bin", 4), 60, "the leecher to see four seeders")
        four = []
        for _ in range(self.reps):
            four.append(self.download(leech, "limited.bin").seconds)
            leech.forget_download("limited.bin")
        one_rate = size / median(one)
        self.rows.append(
            Row(
                f"upload limit {RATE_LIMIT // MIB} MiB/s, 1 seeder, {size // MIB} MiB",
                f"{one_rate / MIB:.1f} MiB/s",
                f"{RATE_LIMIT / MIB:.1f} MiB/s",
                f"{one_rate / RATE_LIMIT:.2f}x",
                "",
                "within 20 %",
                {"one_s": one},
            )
        )
        self.rows.append(
            Row(
                f"4 limited seeders vs 1, {size // MIB} MiB",
                f"{size / median(four) / MIB:.1f} MiB/s",
                f"{one_rate / MIB:.1f} MiB/s",
                f"{median(one) / median(four):.2f}x",
                "",
                ">= 3.6x (libtorrent ~2.9x)",
                {"four_s": four},
            )
        )
        lt1, lt4 = self._libtorrent(1, RATE_LIMIT, path), self._libtorrent(4, RATE_LIMIT, path)
        if lt1 and lt4:
            self.rows.append(
                Row(
                    "libtorrent: 4 limited seeders vs 1",
                    f"{size / median(lt4) / MIB:.1f} MiB/s",
                    f"{size / median(lt1) / MIB:.1f} MiB/s",
                    f"{median(lt1) / median(lt4):.2f}x",
                    "",
                    "reference",
                    {"lt1_s": lt1, "lt4_s": lt4},
                )
            )
        self.stop_all()

    def idle(self) -> None:
        """What a node costs while nothing happens, on a node with the defaults (web on),
        after it settled: every process's CPU over IDLE_SECONDS, as % of a core, and its
        proportional set size (PSS: shared pages split between the processes sharing them,
        so the sum is what the node holds). Every process is supervisord and all its
        descendants: the roles and any child a role runs. A node runs all day on every
        machine; a role that polls pays for it in wakeups, and on a one-core board or a
        laptop on battery that is the whole cost of having it. Issue 38's goal: <= 0.5 %
        of a core and <= 150 MB in all. No reference runs idle the same way here."""
        from procstat import children, cpu_seconds

        node = self.node("idle")
        self.start(node)
        every = {*dbroles.ROLES, *dbroles.OPTIONAL_ROLES}

        def all_beating() -> list[str]:
            found = [str(r) for (r,) in node.sql("SELECT role FROM heartbeats ORDER BY role")]
            return found if set(found) >= every else []

        def tree(pid: int) -> list[int]:
            found = [pid]
            for child in children(pid):
                found += tree(child)
            return found

        def pss_mb(pid: int) -> float:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
            return 0.0

        wait_for(all_beating, 60, "every role to beat")
        time.sleep(IDLE_SETTLE_SECONDS)  # the start-up index and first announcements end
        assert node.proc is not None
        names = {node.proc.pid: "supervisord"}
        names.update({int(pid): str(r) for r, pid in node.sql("SELECT role, pid FROM heartbeats")})
        pids = tree(node.proc.pid)
        for pid in pids:
            names.setdefault(pid, f"{Path(f'/proc/{pid}/comm').read_text().strip()}[{pid}]")
        before = {pid: cpu_seconds(pid, waited_children=True) for pid in pids}
        t0 = time.monotonic()
        time.sleep(IDLE_SECONDS)
        spent = {names[p]: cpu_seconds(p, waited_children=True) - before[p] for p in pids}
        took = time.monotonic() - t0
        pss = {names[p]: pss_mb(p) for p in tree(node.proc.pid) if p in names}
        self.stop_all()
        share = {name: 100 * cpu / took for name, cpu in spent.items()}
        self.rows.append(
            Row(
                f"idle node, {IDLE_SECONDS:.0f} s: % of a core, every process",
                f"{sum(share.values()):.2f} %",
                "-",
                "-",
                goal="<= 0.5 %: " + ", ".join(f"{r} {v:.2f}" for r, v in share.items()),
                raw={"cpu_s": spent, "seconds": took},
            )
        )
        self.rows.append(
            Row(
                "idle node: PSS, every process",
                f"{sum(pss.values()):.1f} MB",
                "-",
                "-",
                goal="<= 150 MB: " + ", ".join(f"{r} {v:.1f}" for r, v in pss.items()),
                raw={"pss_mb": pss},
            )
        )

    def discovery(self) -> None:
        """Start-to-peers and new-file-to-peer latencies."""
        a = self.node("disc-a")
        a.start()
        a.wait_ready()
        starts, files = [], []
        for rep in range(self.reps):
            b = self.node(f"disc-b{rep}")
            launched = b.start()
            wait_for(
                lambda b=b: a.scalar("SELECT count(*) FROM peers WHERE username = ?", (b.label,)),
                30,
                "discovery",
            )
            starts.append(time.time() - launched)
            b.wait_ready()
            name = f"new-{rep}.txt"
            dropped = time.time()
            (b.share / name).write_bytes(os.urandom(1000))
            wait_for(lambda name=name: a.knows(name), 30, "the new file")
            files.append(time.time() - dropped)
            b.stop()
        self.rows.append(
            Row(
                "discovery: node start -> in a peer's peers table",
                f"{median(starts):.2f} s",
                "-",
                "-",
                "",
                "< 1 s",
                {"s": starts},
            )
        )
        self.rows.append(
            Row(
                "discovery: new file in share -> known by a peer",
                f"{median(files):.2f} s",
                "-",
                "-",
                "",
                "< 2 s",
                {"s": files},
            )
        )
        self.stop_all()

    def catalog(self) -> None:
        """10,000 small files: first index, unchanged restart, time for a peer to learn them."""
        from p2pshare.db.engine import Database
        from p2pshare.services.server.indexer import ShareIndexer
        from p2pshare.services.settings import load_settings

        big = self.node("many")
        for i in range(CATALOG_FILES):
            sub = big.share / f"d{i // 500:02d}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i:05d}.txt").write_bytes(os.urandom(1024))
        past = time.time() - 10
        for path in big.share.rglob("*.txt"):
            os.utime(path, (past, past))
        settings = load_settings(big.env)
        db = Database.open(settings.db_path)
        t0 = time.perf_counter()
        ShareIndexer(db, settings).step()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = ShareIndexer(db, settings).step()
        again = time.perf_counter() - t0
        db.close()
        assert stats.unchanged == CATALOG_FILES and stats.touched == 0
        peer = self.node("many-peer")
        peer.start()
        peer.wait_ready()
        launched = big.start()
        wait_for(
            lambda: peer.scalar("SELECT count(*) FROM holdings") == CATALOG_FILES,
            120,
            "the peer to learn the catalog",
            0.05,
        )
        learned = time.time() - launched
        self.rows.append(
            Row(
                f"catalog {CATALOG_FILES} files: first index",
                f"{first:.2f} s",
                "-",
                "-",
                "",
                "",
                {"s": first},
            )
        )
        self.rows.append(
            Row(
                f"catalog {CATALOG_FILES} files: restart, nothing changed",
                f"{again:.2f} s",
                f"{first:.2f} s (first index)",
                f"{again / first:.3f}x",
                "",
                "< 2 s",
                {"s": again},
            )
        )
        self.rows.append(
            Row(
                f"catalog {CATALOG_FILES} files: node start -> peer knows all",
                f"{learned:.2f} s",
                "-",
                "-",
                "",
                "< 5 s",
                {"s": learned},
            )
        )
        self.stop_all()


SCENARIOS: dict[str, Callable[[Bench], None]] = {
    "transfer": Bench.transfer,
    "pinned": Bench.pinned,
    "disk": Bench.disk,
    "index": Bench.index,
    "small": Bench.small,
    "limit": Bench.rate_limited,
    "discovery": Bench.discovery,
    "catalog": Bench.catalog,
    "encrypted": Bench.encrypted,
    "idle": Bench.idle,
    "many": many,  # issue 25: a folder of many small files (bench/many.py)
    "biglan": biglan,  # issue 22: 1,000 peers waking at once (bench/biglan.py)
    "torrent": torrent,  # issue 24: BitTorrent vs nginx vs p2pshare (bench/torrent_transfer.py)
    "bigshare": bigshare,  # issue 34: 100,000 files shared, one changed (bench/bigshare.py)
    "hostile": hostile,  # issue 37: a manifest bomb for 60 s (bench/hostile.py)
}
if (HERE / "cli_timing.py").exists():
    SCENARIOS["cli"] = Bench.cli


def goal_table(rows: list[Row], ran: list[str]) -> list[list[str]]:
    """One line per goal of issue 10: the figure that measures it, met or missed."""
    out = []
    for key, (text, _op, _threshold, scenario) in GOALS.items():
        found = [r for r in rows if r.goal_key == key]
        if found:
            r = found[0]
            figure = f"{r.ratio} ({r.p2pshare} vs {r.reference})" if r.ratio != "-" else r.p2pshare
            out.append([text, figure, r.met or "not measured"])
        elif scenario in ran:
            out.append([text, "-", "skipped (see above)"])
        else:
            out.append([text, "-", f"not run (--only {scenario})"])
    return out


def default_tmp() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and fs_type(shm) == "tmpfs" else Path(tempfile.gettempdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument(
        "--tmp-dir", type=Path, default=default_tmp(), help="tmpfs folder (default /dev/shm)"
    )
    parser.add_argument(
        "--disk-dir",
        type=Path,
        default=Path("/var/tmp"),
        help="folder on a real disk for the `disk` scenario (default /var/tmp)",
    )
    parser.add_argument("--pin-cpu", default="0", help="CPU for the `pinned` scenario")
    parser.add_argument("--many-files", type=int, nargs="+", default=[1000], help="`many`: N ...")
    parser.add_argument("--biglan-peers", type=int, default=1000, help="`biglan`: N peers")
    parser.add_argument(
        "--bigshare-files", type=int, default=100_000, help="`bigshare`: N files (or 1000000)"
    )
    args = parser.parse_args()
    if fs_type(args.tmp_dir) != "tmpfs":
        print(f"note: {args.tmp_dir} is {fs_type(args.tmp_dir)}, not tmpfs", flush=True)
    ran = args.only or list(SCENARIOS)

    def scenarios(bench: Bench) -> None:
        bench.many_files = args.many_files  # type: ignore[attr-defined]
        bench.biglan_peers = args.biglan_peers  # type: ignore[attr-defined]
        bench.bigshare_files = args.bigshare_files  # type: ignore[attr-defined]
        for name in ran:
            print(f"== {name}", flush=True)
            SCENARIOS[name](bench)

    run_alone(
        "p2pbench",
        args.tmp_dir,
        scenarios,
        lambda rows: goal_table(rows, ran),
        "goal (issues 10 and 12)",
        args.out,
        size=args.size_mib * MIB,
        reps=args.reps,
        disk_dir=args.disk_dir,
        pin_cpu=args.pin_cpu,
    )


def run_alone(
    prefix: str,
    tmp_dir: Path,
    scenario: Callable[[Bench], None],
    goals: Callable[[list[Any]], list[list[str]]],
    goal_header: str,
    out: Path,
    *,
    size: int = 0,
    reps: int = 1,
    disk_dir: Path = Path("/var/tmp"),
    pin_cpu: str = "0",
) -> None:
    """A benchmark's command line: `scenario` on a Bench in a new folder under `tmp_dir`,
    then its report with the load average before and after; every folder it made removed."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_dir))
    root.chmod(0o755)  # nginx's workers run as an unprivileged user and must read the files
    bench = Bench(root, size, reps, disk_dir, pin_cpu)
    load = [os.getloadavg()]
    try:
        scenario(bench)
    finally:
        bench.stop_all()
        for path in [root, *bench.cleanup]:
            shutil.rmtree(path, ignore_errors=True)
    load.append(os.getloadavg())
    report(bench, goals(bench.rows), goal_header, load, out)


def report(
    bench: Bench, goals: list[list[str]], goal_header: str, load: list[Any], out: Path
) -> None:
    """Print every row, then the goals met or missed and the load; write the raw figures."""
    table = [
        [r.scenario, r.p2pshare, r.reference, r.ratio, r.rss, r.goal, r.met] for r in bench.rows
    ]
    print(
        tabulate(
            table,
            headers=["scenario", "p2pshare", "reference", "ratio", "peak RSS", "goal", "met"],
        )
    )
    print()
    print(tabulate(goals, headers=[goal_header, "measured", ""]))
    print(
        f"{os.cpu_count()} CPUs; load average (1, 5, 15 min) at start "
        f"{', '.join(f'{x:.1f}' for x in load[0])}, at end {', '.join(f'{x:.1f}' for x in load[1])}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = {
        "cpus": os.cpu_count(),
        "loadavg_start_end": load,
        "rows": [{**asdict(r), "met": r.met} for r in bench.rows],
    }
    out.write_text(json.dumps(figures, indent=2))
    print(f"raw figures: {out}")


if __name__ == "__main__":
    main()
