"""Issue 25's `many` scenario: a folder of many small files, against a plain parallel HTTP fetch.

    python bench/many.py [--many-files 1000 [10000]] [--reps 1] [--where tmpfs disk]
                         [--tmp-dir /dev/shm] [--disk-dir /var/tmp] [--profile DIR]

N files (1,000 by default) of 1-64 KiB (sizes from a seeded random generator, so every
run has the same tree) in a nested tree `many/dNN/eN/fNNNNN.bin`, shared by one seeder;
one leecher; both under supervisord with the node's defaults (bench/nodes.py). Once the
leecher knows every file, `p2pctl download many/` is timed as a user types it (following
its progress bar, start to exit) and every byte is compared with the original; then
`aria2c -j16 -i LIST` (one `dir=`/`out=` pair a URL, keeping the tree) and `curl
--parallel --parallel-max 16` fetch the same tree from nginx, in the same run, on tmpfs
(--tmp-dir) and in a folder on a real disk (--disk-dir; p2pshare fsyncs what it
publishes, aria2c and curl do not). Printed: files/s and wall time, the ratios against
aria2c and curl, CPU-seconds of every role of both nodes (and of p2p's client, aria2c,
curl and nginx), each role's peak RSS, database write transactions per 1,000 files (the
leecher's downloader and server, the seeder's server: the counts their heartbeats carry),
the first index of a 10,000-file share against `find -type f -exec sha256sum {} +`, and,
given two counts (`--many-files 1000 10000`), the time ratio between them. Then issue
25's goals, met or missed. bench/bench.py runs it as `--only many`.

--profile DIR (tmpfs only): during the first download, py-spy samples the leecher's
downloader and both servers (raw stacks in DIR); during a second, strace -c -f counts
their system calls (fsync, fdatasync, connect, openat...). Both slow the roles down: the
figures of those runs are for the profile, not for the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goalrow import ScenarioRow  # noqa: E402
from httpref import Nginx, installed  # noqa: E402
from nodes import ROLES, BenchNode, beside_python, wait_for  # noqa: E402
from procstat import fs_type, run_timed, total_cpu, warm  # noqa: E402

HERE = Path(__file__).resolve().parent
KIB = 1024
MIN_SIZE, MAX_SIZE = 1 * KIB, 64 * KIB
SEED = 25  # the number: the same tree every run
FOLDER = "many"
PARALLEL = 16  # aria2c -j16, curl --parallel-max 16
INDEX_FILES = 10_000  # issue 25 item 5 measures the first index of this many
# Issue 25's goals: key -> (text, comparison, threshold).
GOALS: dict[str, tuple[str, str, float]] = {
    "tmpfs": ("1,000 files on tmpfs: `p2pctl download many/` >= 1.0x aria2c -j16", ">=", 1.0),
    "disk": ("1,000 files on disk: >= 0.8x aria2c -j16 (fsync on our side only)", ">=", 0.8),
    "scale": ("10,000 files take <= 12x the time of 1,000", "<=", 12.0),
    "writes": ("database write transactions per 1,000 files <= 50", "<=", 50.0),
    "rss": ("peak RSS of each role < 100 MB", "<", 100.0),
    "index": ("first index of 10,000 small files >= 0.5x find | sha256sum", ">=", 0.5),
}


class ManyRow(ScenarioRow):
    GOALS = GOALS


@dataclass
class Run:
    """One `p2pctl download many/` and what it cost."""

    seconds: float
    p2pctl_cpu: float
    cpu: dict[str, float]  # "leech/downloader" -> CPU-seconds during the download
    writes: dict[str, int]  # "leech/downloader" -> write transactions during it
    row_seconds: float  # first requested_at to last finished_at of the request's rows
    per_file: dict[str, float]  # medians over the request's rows, seconds
    gave_up: str = ""  # p2pctl exited early: why (then `seconds` runs to the last file)


@dataclass
class HttpRun:
    client: str
    seconds: float
    client_cpu: float
    nginx_cpu: float


# ------------------------------------------------------------------ the tree


def make_tree(top: Path, count: int) -> int:
    """`count` files of MIN_SIZE..MAX_SIZE bytes under top/many/, nested two levels (about
    40 files a folder); returns their total size. Sizes come from Random(SEED); contents
    are random bytes, so no two files share content."""
    rng = random.Random(SEED)
    sizes = [rng.randint(MIN_SIZE, MAX_SIZE) for _ in range(count)]
    total = 0
    for i, size in enumerate(sizes):
        path = top / FOLDER / rel_path(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        total += size
    # Older than the indexer's settle time, so it hashes them at its first look.
    past = time.time() - 10
    for i in range(count):
        os.utime(top / FOLDER / rel_path(i), (past, past))
    return total


def rel_path(i: int) -> str:
    return f"d{i // 400:02d}/e{i // 40 % 10}/f{i:05d}.bin"


def link_tree(src: Path, dest: Path) -> None:
    """Hard-link every file of src under dest, keeping the tree (no extra disk)."""
    for folder, _dirs, files in os.walk(src):
        out = dest / Path(folder).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.link(Path(folder) / name, out / name)


def same_tree(original: Path, got: Path, count: int) -> None:
    """Every file of original is in got with the same bytes, and nothing else is.
    Raises RuntimeError."""
    for i in range(count):
        rel = rel_path(i)
        try:
            same = (original / rel).read_bytes() == (got / rel).read_bytes()
        except OSError as exc:
            raise RuntimeError(f"{got / rel}: {exc.strerror}") from None
        if not same:
            raise RuntimeError(f"{got / rel} differs from the original")
    found = sum(len(files) for _d, _s, files in os.walk(got))
    if found != count:
        raise RuntimeError(f"{got} holds {found} files, expected {count}")


# ------------------------------------------------------------------ nodes


def role_writes(node: BenchNode, role: str) -> int | None:
    """The write transactions a role's heartbeat detail reports (`..., N db writes`), or
    None when this version of the role reports none."""
    detail = str(node.scalar("SELECT detail FROM heartbeats WHERE role = ?", (role,)))
    tail = detail.split(",")[-1].split()
    return int(tail[0]) if len(tail) == 3 and tail[1:] == ["db", "writes"] else None


def knows_all(node: BenchNode, count: int) -> bool:
    n = node.scalar(
        "SELECT count(DISTINCT name) FROM holdings WHERE name LIKE ? AND bitfield IS NULL",
        (f"{FOLDER}/%",),
    )
    return bool(n and n >= count)


def watched(seeder: BenchNode, leech: BenchNode) -> list[tuple[str, BenchNode, str]]:
    """("leech/downloader", node, role) for every role of both nodes."""
    return [
        (f"{side}/{r}", n, r) for side, n in (("leech", leech), ("seed", seeder)) for r in ROLES
    ]


def download(seeder: BenchNode, leech: BenchNode, count: int, total: int) -> Run:
    """`p2pctl download many/` as a user types it, to its exit, with the CPU and write
    transactions of every role meanwhile. Raises RuntimeError unless every file is done."""
    roles = watched(seeder, leech)
    warm(leech.home, total)
    before_cpu = {k: n.cpu_seconds(r) for k, n, r in roles}
    before_writes = {k: role_writes(n, r) for k, n, r in roles}
    since = time.time()
    gave_up = ""
    query = (
        "SELECT status, requested_at, started_at, finished_at FROM downloads "
        "WHERE requested_at >= ? ORDER BY id"
    )
    started = time.perf_counter()
    try:
        wall, p2pctl_cpu = run_timed(
            [beside_python("p2pctl"), "download", f"{FOLDER}/"], env=leech.env
        )
    except subprocess.CalledProcessError as exc:
        # p2pctl stopped following (exit 3: it took the downloader for stopped, its
        # heartbeat stale). The request goes on: time it to its last file, and say so.
        gave_up = f"p2pctl exited {exc.returncode} after {time.perf_counter() - started:.1f} s"
        print(f"   {gave_up}; waiting for the downloads themselves", flush=True)
        wait_for(
            lambda: (
                len(got := leech.sql(query, (since - 1,))) == count
                and all(r[0] in ("done", "failed", "cancelled") for r in got)
            ),
            3600,
            "the request's downloads to end",
            0.05,
        )
        wall, p2pctl_cpu = time.perf_counter() - started, float("nan")
    cpu = {k: n.cpu_seconds(r) - before_cpu[k] for k, n, r in roles}
    rows = leech.sql(query, (since - 1,))
    done = [r for r in rows if r[0] == "done"]
    if len(done) != count:
        states = statistics.multimode([r[0] for r in rows]) if rows else ["none"]
        raise RuntimeError(f"{len(done)} of {count} downloads done (mostly {states[0]})")
    time.sleep(2.5)  # one heartbeat, so the counts include the last batch
    writes = {}
    for k, n, r in roles:
        after = role_writes(n, r)
        if after is not None and before_writes[k] is not None:
            writes[k] = after - before_writes[k]  # type: ignore[operator]
    first = min(r[1] for r in done)
    last = max(r[3] for r in done)
    per_file = {
        "queued_s": statistics.median(r[2] - r[1] for r in done),
        "running_s": statistics.median(r[3] - r[2] for r in done),
    }
    return Run(wall, p2pctl_cpu, cpu, writes, last - first, per_file, gave_up)


def forget(leech: BenchNode) -> None:
    """Remove the downloaded tree so the next repetition fetches it all again."""
    shutil.rmtree(leech.downloads / FOLDER, ignore_errors=True)
    wait_for(
        lambda: not leech.sql("SELECT 1 FROM local_files WHERE root = 'download' LIMIT 1"),
        120,
        "the leecher's indexer to notice the removed downloads",
        0.1,
    )


# ------------------------------------------------------------------ HTTP references


def fetch_tree(web: Nginx, client: str, count: int, out: Path, total: int) -> HttpRun:
    """The tree fetched from nginx by aria2c -j16 (an input file: one URL a file with
    its dir= and out=) or curl --parallel (a config file: url/output pairs, --create-dirs),
    16 at a time; out is checked, then removed."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    listing = out.parent / f"{client}.list"
    lines = []
    for i in range(count):
        rel = f"{FOLDER}/{rel_path(i)}"
        target = out / rel
        if client == "aria2c":
            lines += [web.url(rel), f"  dir={target.parent}", f"  out={target.name}"]
        else:
            lines += [f'url = "{web.url(rel)}"', f'output = "{target}"']
    listing.write_text("\n".join(lines) + "\n")
    tool = shutil.which(client)
    assert tool is not None
    args = {
        "aria2c": [
            f"-j{PARALLEL}", "-q", "--allow-overwrite=true", "--auto-file-renaming=false",
            "--file-allocation=none", "-i", str(listing),
        ],
        "curl": [
            "--parallel", "--parallel-max", str(PARALLEL), "-sSf", "--create-dirs",
            "-K", str(listing),
        ],
    }[client]  # fmt: skip
    warm(out, total)
    pids = web.pids()
    nginx_before = total_cpu(pids)
    seconds, cpu = run_timed([tool, *args])
    nginx_cpu = total_cpu(pids) - nginx_before
    got = sum(len(files) for _d, _s, files in os.walk(out))
    if got != count:
        raise RuntimeError(f"{client} fetched {got} of {count} files")
    shutil.rmtree(out, ignore_errors=True)
    return HttpRun(client, seconds, cpu, nginx_cpu)


# ------------------------------------------------------------------ profiling


@contextlib.contextmanager
def sampling(
    tool: str, targets: list[tuple[str, int]], out: Path, seconds: float = 600
) -> Iterator[None]:
    """py-spy record (raw stacks, every thread, without pausing the process) or strace -c -f
    on each (label, pid) for as long as the block runs; output in out/LABEL.{txt,strace}."""
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    errors = contextlib.ExitStack()
    for label, pid in targets:
        if tool == "py-spy":
            cmd = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--threads",
                   "--nonblocking", "-r", "200", "-d", str(int(seconds)),
                   "-o", str(out / f"{label}.txt")]  # fmt: skip
        else:
            cmd = ["strace", "-c", "-f", "-qq", "-o", str(out / f"{label}.strace"), "-p", str(pid)]
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=errors.enter_context(open(out / f"{label}.{tool}.err", "wb")),  # noqa: SIM115
            )
        )
    time.sleep(1.0)  # attached before the timed command starts
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        errors.close()


# ------------------------------------------------------------------ index


def index_vs_sha256sum(root: Path, count: int) -> dict[str, float]:
    """First index of a share of `count` small files (the server's ShareIndexer.step, in
    this process, on a new database, logging to a file as the role logs to supervisord)
    against `find SHARE -type f -exec sha256sum {} +` over the same folder, alternating."""
    from p2pshare.db.engine import Database
    from p2pshare.services.server.indexer import ShareIndexer
    from p2pshare.services.settings import load_settings

    top = root / f"index-{count}"
    make_tree(top, count)
    home = top / "home"
    home.mkdir()
    share = top / FOLDER
    env = {"P2P_HOME": str(home), "P2P_SHARE_DIR": str(share), "P2P_BROADCAST": "127.255.255.255"}
    log = logging.getLogger("p2p")
    handler = logging.FileHandler(top / "index.log")
    handler.setFormatter(logging.Formatter("%(asctime)s server %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    ours, theirs = [], []
    try:
        for rep in range(2):
            settings = load_settings(env)
            settings.make_dirs()
            db_path = home / f"p2p-{rep}.db"
            database = Database.open(db_path)
            # What the role does at start: open the database; then the timed first scan.
            started = time.perf_counter()
            stats = ShareIndexer(database, settings).step()
            ours.append(time.perf_counter() - started)
            database.close()
            if stats.added != count:
                raise RuntimeError(f"the indexer added {stats.added} of {count} files")
            started = time.perf_counter()
            subprocess.run(
                ["find", str(share), "-type", "f", "-exec", "sha256sum", "{}", "+"],
                stdout=subprocess.DEVNULL,
                check=True,
            )
            theirs.append(time.perf_counter() - started)
            for extra in home.glob(f"p2p-{rep}.db*"):
                extra.unlink()
    finally:
        log.removeHandler(handler)
        handler.close()
        shutil.rmtree(top, ignore_errors=True)
    return {"index_s": min(ours), "sha256sum_s": min(theirs)}


# ------------------------------------------------------------------ the scenario


class Many:
    """The scenario over a bench.py Bench (its root, nodes, rows and UDP port)."""

    def __init__(self, bench: Any, counts: list[int], where: list[str], profile: Path | None):
        self.bench = bench
        self.counts = counts
        self.where = where
        self.profile = profile
        self.walls: dict[int, float] = {}

    def rows(self, row: ManyRow) -> None:
        self.bench.rows.append(row)

    def run(self) -> None:
        for place in self.where:
            base = self._folder(place)
            if base is None:
                continue
            for count in self.counts:
                self._one(base, place, count)
        if len(self.walls) >= 2:
            small, big = min(self.walls), max(self.walls)
            ratio = self.walls[big] / self.walls[small]
            self.rows(
                ManyRow(
                    f"many: {big} files vs {small} (tmpfs), `p2pctl download` wall",
                    f"{self.walls[big]:.1f} s",
                    f"{self.walls[small]:.1f} s",
                    f"{ratio:.1f}x the time",
                    goal=GOALS["scale"][0] if big == 10 * small else "report",
                    value=ratio,
                    scenario_goal="scale" if big == 10 * small else "",
                )
            )
        figures = index_vs_sha256sum(self.bench.root, INDEX_FILES)
        ratio = figures["sha256sum_s"] / figures["index_s"]
        self.rows(
            ManyRow(
                f"many: first index of {INDEX_FILES} files of 1-64 KiB (tmpfs) vs "
                "find -exec sha256sum {} +",
                f"{INDEX_FILES / figures['index_s']:.0f} files/s",
                f"{INDEX_FILES / figures['sha256sum_s']:.0f} files/s",
                f"{ratio:.2f}x",
                goal=GOALS["index"][0],
                raw=figures,
                value=ratio,
                scenario_goal="index",
            )
        )

    def _folder(self, place: str) -> Path | None:
        if place == "tmpfs":
            return Path(self.bench.root)
        disk = Path(self.bench.disk_dir)
        kind = fs_type(disk)
        if kind == "tmpfs":
            self.rows(ManyRow.skipped("many on disk", f"{disk} is tmpfs"))
            return None
        root = Path(tempfile.mkdtemp(prefix="p2pbench-many", dir=disk))
        root.chmod(0o755)  # nginx's workers run as an unprivileged user
        self.bench.cleanup.append(root)
        return root

    def _one(self, base: Path, place: str, count: int) -> None:
        bench = self.bench
        label = f"{count} files ({'tmpfs' if place == 'tmpfs' else f'{fs_type(base)} {base}'})"
        src = base / f"tree-{count}"
        total = make_tree(src, count)
        tag = f"m{count}{place[0]}"
        seeder = BenchNode(base, f"{tag}-seed", bench.udp)
        leech = BenchNode(base, f"{tag}-leech", bench.udp)
        bench.nodes += [seeder, leech]
        link_tree(src / FOLDER, seeder.share / FOLDER)
        launched = time.monotonic()
        bench.start(seeder, leech)
        wait_for(
            lambda: knows_all(leech, count), 60 + count / 10, "the leecher to learn the tree", 0.1
        )
        learned = time.monotonic() - launched
        runs: list[Run] = []
        http: dict[str, list[HttpRun]] = {}
        clients = [c for c in ("aria2c", "curl") if installed(c)]
        with Nginx(src, base / f"nginx-{tag}") as web:
            for rep in range(bench.reps):
                runs.append(download(seeder, leech, count, total))
                same_tree(src / FOLDER, leech.downloads / FOLDER, count)
                forget(leech)
                for client in clients:
                    http.setdefault(client, []).append(
                        fetch_tree(web, client, count, base / f"http-{tag}", total)
                    )
                print(f"   {label} rep {rep + 1}: p2pctl {runs[-1].seconds:.2f} s, "
                      + ", ".join(f"{c} {h[-1].seconds:.2f} s" for c, h in http.items()),
                      flush=True)  # fmt: skip
            if self.profile is not None and place == "tmpfs":
                self._profile(seeder, leech, count, total, src)
        rss = {k: n.peak_rss_mb(r) for k, n, r in watched(seeder, leech)}
        bench.stop_all()
        shutil.rmtree(src, ignore_errors=True)
        self._rows(label, place, count, runs, http, rss, learned)

    def _profile(
        self, seeder: BenchNode, leech: BenchNode, count: int, total: int, src: Path
    ) -> None:
        assert self.profile is not None
        targets = [
            ("leech-downloader", leech.role_pid("downloader")),
            ("leech-server", leech.role_pid("server")),
            ("seed-server", seeder.role_pid("server")),
        ]
        for tool in ("py-spy", "strace"):
            if not shutil.which(tool):
                print(f"   profile: {tool} not installed", flush=True)
                continue
            with sampling(tool, targets, self.profile / f"{count}"):
                run = download(seeder, leech, count, total)
            same_tree(src / FOLDER, leech.downloads / FOLDER, count)
            forget(leech)
            (self.profile / f"{count}" / f"{tool}-run.json").write_text(
                json.dumps(asdict(run), indent=2)
            )
            print(f"   profile ({tool}): p2pctl {run.seconds:.2f} s", flush=True)

    def _rows(
        self,
        label: str,
        place: str,
        count: int,
        runs: list[Run],
        http: dict[str, list[HttpRun]],
        rss: dict[str, float],
        learned: float,
    ) -> None:
        wall = statistics.median(r.seconds for r in runs)
        if place == "tmpfs":
            self.walls[count] = wall
        fsync = "" if place == "tmpfs" else "; p2pshare fsyncs, aria2c and curl do not"
        fsync += "".join(f"; {r.gave_up}, timed to the last file" for r in runs if r.gave_up)
        for client in ("aria2c", "curl"):
            got = http.get(client)
            if not got:
                self.rows(
                    ManyRow.skipped(
                        f"many: {label} vs {client}", f"nginx or {client} not installed"
                    )
                )
                continue
            ref = statistics.median(h.seconds for h in got)
            ratio = ref / wall
            goal_key = place if client == "aria2c" and count == 1000 else ""
            self.rows(
                ManyRow(
                    f"many: {label}, `p2pctl download {FOLDER}/` vs {client} "
                    f"{'-j' if client == 'aria2c' else '--parallel-max '}{PARALLEL} from nginx",
                    f"{count / wall:.0f} files/s ({wall:.2f} s)",
                    f"{count / ref:.0f} files/s ({ref:.2f} s)",
                    f"{ratio:.3f}x",
                    goal=(GOALS[goal_key][0] if goal_key else "reference") + fsync,
                    raw={
                        "p2pshare_s": [r.seconds for r in runs],
                        f"{client}_s": [h.seconds for h in got],
                    },
                    value=ratio,
                    scenario_goal=goal_key,
                )
            )  # fmt: skip
        cpu = {k: statistics.median(r.cpu[k] for r in runs) for k in runs[0].cpu}
        p2pctl = statistics.median(r.p2pctl_cpu for r in runs)
        ours = sum(cpu.values()) + p2pctl
        ref_text = "; ".join(
            f"{c} {statistics.median(h.client_cpu for h in got):.2f} + nginx "
            f"{statistics.median(h.nginx_cpu for h in got):.2f}"
            for c, got in http.items()
        )
        shown = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v >= 0.05)
        self.rows(
            ManyRow(
                f"many: {label}: CPU-seconds, every role of both nodes + p2pctl",
                f"{ours:.2f} s ({shown}, p2pctl {p2pctl:.2f})",
                ref_text or "-",
                "-",
                goal="report",
                raw={"cpu_s": cpu, "p2pctl_cpu_s": p2pctl},
            )
        )
        writes = {k: statistics.median(r.writes[k] for r in runs) for k in runs[0].writes}
        # The roles a download keeps busy; the others write their heartbeats only.
        busy = ("leech/downloader", "leech/server", "seed/server")
        counted = {k: v for k, v in writes.items() if k in busy}
        per_k = sum(counted.values()) * 1000 / count
        beats = wall / 2.0  # each role beats every 2 s; those are in the counts too
        self.rows(
            ManyRow(
                f"many: {label}: db write transactions per 1,000 files",
                f"{per_k:.0f} ("
                + ", ".join(f"{k} {v * 1000 / count:.0f}" for k, v in counted.items())
                + ")",
                "-",
                "-",
                goal=GOALS["writes"][0] + f"; heartbeats are ~{beats:.0f} a role of these",
                raw={"writes": writes},
                value=per_k if counted else None,
                scenario_goal="writes" if counted else "",
            )
        )
        worst = max(rss.values())
        self.rows(
            ManyRow(
                f"many: {label}: peak RSS, each role of both nodes",
                f"{worst:.0f} MB",
                "-",
                "-",
                ", ".join(f"{k} {v:.0f}" for k, v in rss.items()),
                GOALS["rss"][0],
                rss,  # type: ignore[arg-type]
                value=worst,
                scenario_goal="rss",
            )
        )
        per_file = {k: statistics.median(r.per_file[k] for r in runs) for k in runs[0].per_file}
        self.rows(
            ManyRow(
                f"many: {label}: per file (medians of the downloads rows)",
                f"queued {per_file['queued_s'] * 1000:.0f} ms, running "
                f"{per_file['running_s'] * 1000:.0f} ms",
                f"rows span {statistics.median(r.row_seconds for r in runs):.2f} s; "
                f"seeder start -> leecher knows all {learned:.1f} s",
                "-",
                goal="report",
                raw=per_file,
            )
        )


def goal_table(rows: list[Any]) -> list[list[str]]:
    """One line per goal of issue 25: the figure that measures it, met or missed."""
    out = []
    for key, (text, _op, _threshold) in GOALS.items():
        found = [r for r in rows if getattr(r, "scenario_goal", "") == key]
        if not found:
            out.append([text, "-", "not measured"])
            continue
        worst = found[0]
        for r in found[1:]:
            if r.met == "MISSED":
                worst = r
        figure = worst.ratio if worst.ratio != "-" else worst.p2pshare
        out.append([text, f"{figure} ({worst.scenario.removeprefix('many: ')})", worst.met])
    return out


def many(bench: Any) -> None:
    """bench.py's `many` scenario: counts from bench.many_files (default 1,000)."""
    counts = sorted(getattr(bench, "many_files", None) or [1000])
    Many(bench, counts, ["tmpfs", "disk"], None).run()
    print(tabulate(goal_table(bench.rows), headers=["goal (issue 25)", "measured", ""]))


def main() -> None:
    from bench import default_tmp, run_alone  # bench.py imports this module: import it late

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--many-files", type=int, nargs="+", default=[1000])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--where", nargs="+", choices=["tmpfs", "disk"], default=["tmpfs", "disk"])
    parser.add_argument("--tmp-dir", type=Path, default=default_tmp())
    parser.add_argument("--disk-dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--profile", type=Path, default=None, help="py-spy and strace output")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "many.json")
    args = parser.parse_args()
    run_alone(
        "p2pbench-many",
        args.tmp_dir,
        lambda bench: Many(bench, sorted(args.many_files), args.where, args.profile).run(),
        goal_table,
        "goal (issue 25)",
        args.out,
        reps=args.reps,
        disk_dir=args.disk_dir,
    )


if __name__ == "__main__":
    main()
