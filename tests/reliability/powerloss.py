"""Power cuts on demand for a supervised node whose whole P2P_HOME is on LazyFS.

LazyFS (../shared/tools/powerloss, see its README) keeps every byte not fsynced in its
own cache; `lazyfs::clear-cache` drops them, which is what a power cut does to a disk.
A round here: a leecher under supervisord, its home on the LazyFS mount, downloads from
a seeder (an ordinary node in /tmp) what the round's kind asks; at the kind's cut point
every process of the leecher's node is stopped and SIGKILLed (nothing may fsync after
the cut), the cache is dropped, the file system unmounted and mounted again (the
reboot), and the node started again. A watch looks at the download folder and at what
the node offers from the moment the file system is back until the end, and the round
counts what must be zero:
- wrong visible: a file in the download folder that is not whole and right (or a name
  nothing was downloaded under);
- lost acknowledged: a download or request `p2pctl` reported as queued that the node no
  longer has, or that does not end done;
- duplicates: a file fetched twice (published again as `name (1)`, or two done downloads);
- wrong offers: a `local_files` row of the download folder whose content is not the
  file's right content (what the node would offer peers);
- integrity_check other than ok.

Used by tests/reliability/test_power_loss.py (a few cut points) and bench/powerloss.py
(20 random rounds and their table).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node import REPO, ROLES, Node, pid_running, seed, wait_until

TOOLS = Path(os.environ.get("P2P_POWERLOSS_TOOLS", REPO.parent / "shared" / "tools" / "powerloss"))
KINDS = ("big", "batch", "queued", "publish", "fresh")
CLEARED = "cache is cleared."
CACHE_FULL = "LAZYFS-CACHE-FULL"
# Bounds, not expectations: LazyFS writes through FUSE, and the machine may be busy.
CUT_TIMEOUT = 30.0
DONE_TIMEOUT = 180.0
START_TIMEOUT = 90.0


class Unavailable(Exception):
    """LazyFS cannot run here; the message says why."""


# ------------------------------------------------------------ LazyFS


def build_lazyfs() -> str:
    """The LazyFS binary, built by the tools' build.sh if need be. Raises Unavailable."""
    if not Path("/dev/fuse").exists():
        raise Unavailable("there is no /dev/fuse (FUSE is not available here)")
    if not (TOOLS / "build.sh").is_file():
        raise Unavailable(f"the power-loss tools are not at {TOOLS} (P2P_POWERLOSS_TOOLS)")
    try:
        done = subprocess.run(
            [str(TOOLS / "build.sh")], capture_output=True, text=True, timeout=1200
        )
    except subprocess.TimeoutExpired:
        raise Unavailable("building LazyFS took over 20 minutes") from None
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise Unavailable(f"LazyFS did not build (build.sh exit {done.returncode}): {tail}")
    return done.stdout.strip().splitlines()[-1]


class LazyFS:
    """One LazyFS mount over a backing folder on disk, in a folder of its own under /tmp
    (short, for supervisord's socket path)."""

    def __init__(self, cache_size: str = "512mb") -> None:
        # The backing folder on a disk-backed file system (the tools' README: on tmpfs
        # LazyFS once aborted mid-run).
        self.root = Path(tempfile.mkdtemp(prefix="pl", dir="/var/tmp"))
        self.mnt = self.root / "m"
        self.backing = self.root / "b"
        self.state = self.root / "s"
        self.cache_size = cache_size
        self.fifo: Path | None = None

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LAZYFS_STATE": str(self.state),
            "LAZYFS_CACHE_SIZE": self.cache_size,
        }

    def mount(self) -> None:
        """Raises Unavailable."""
        done = subprocess.run(
            [str(TOOLS / "mount.sh"), str(self.mnt), str(self.backing)],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise Unavailable(f"LazyFS did not mount: {done.stderr.strip()[-300:]}")
        self.fifo = Path(done.stdout.strip().splitlines()[-1])

    def umount(self) -> None:
        subprocess.run(
            [str(TOOLS / "umount.sh"), str(self.mnt), str(self.backing)],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    def _log(self) -> str:
        try:
            return (self.state / "lazyfs.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def clear_cache(self) -> None:
        """Drop every byte not fsynced: the power cut. Returns once LazyFS says it did."""
        self._command("lazyfs::clear-cache", CLEARED)

    def keep_everything(self) -> None:
        """Make what LazyFS holds durable (to read a failed round's logs afterwards)."""
        self._command("lazyfs::cache-checkpoint", "checkpoint is done.")

    def _command(self, command: str, answer: str) -> None:
        """Write a command to LazyFS's FIFO; return once its log shows the answer."""
        before = self._log().count(answer)
        fd = wait_until(
            lambda: _open_fifo(self.fifo), CUT_TIMEOUT, interval=0.01, what="LazyFS's FIFO"
        )
        try:
            os.write(fd, f"{command}\n".encode())
        finally:
            os.close(fd)
        wait_until(
            lambda: self._log().count(answer) > before,
            CUT_TIMEOUT,
            interval=0.01,
            what=f"LazyFS to answer {command}",
        )

    def reboot(self) -> None:
        self.umount()
        self.mount()

    def cache_was_full(self) -> bool:
        """A full cache writes through: a round under it proves nothing."""
        out = self.state / "stdout.log"
        return CACHE_FULL in self._log() or (out.exists() and CACHE_FULL in out.read_text())

    def close(self) -> None:
        self.umount()
        shutil.rmtree(self.root, ignore_errors=True)


def _open_fifo(fifo: Path | None) -> int | None:
    try:
        return os.open(str(fifo), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: LazyFS has not opened it for reading yet
        return None


# ------------------------------------------------------------ processes


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_node(node: Node) -> None:
    """Every process of the node at once: stopped first (so none runs, forks or fsyncs
    while the others die), then SIGKILLed; supervisord is ours, its tree is the node's."""
    sup = node.supervisord
    assert sup is not None
    pids: list[int] = []
    for _ in range(3):  # anything forked between the listing and the stop is caught next
        new = [p for p in [sup.pid, *descendants(sup.pid)] if p not in pids]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        pids += new
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    sup.wait(30)
    wait_until(lambda: not any(pid_running(p) for p in pids), 30, what=f"{node}'s processes to die")
    node.supervisord = None


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# ------------------------------------------------------------ what the seeder offers


@dataclass(frozen=True)
class Content:
    big: str  # the big file's name
    many: str  # the folder of small files, ending in "/"
    expected: dict[str, tuple[int, str]]  # name -> (size, sha256)

    @property
    def small_names(self) -> list[str]:
        return [n for n in self.expected if n.startswith(self.many)]


def seed_content(seeder: Node, *, big_mib: int, small_files: int, rng: random.Random) -> Content:
    """big.bin and many/ (1-64 KiB files in a small tree) in the seeder's share."""
    expected: dict[str, tuple[int, str]] = {}

    def put(name: str, data: bytes) -> None:
        seed(seeder, name, data)
        expected[name] = (len(data), hashlib.sha256(data).hexdigest())

    put("big.bin", rng.randbytes(big_mib << 20))
    for i in range(small_files):
        put(f"many/d{i % 7}/f{i:04d}.bin", rng.randbytes(rng.randint(1024, 64 * 1024)))
    return Content("big.bin", "many/", expected)


# ------------------------------------------------------------ the watch


@dataclass
class Watch:
    """Looks, until stopped, at every file in the download folder and every file the node
    offers from it; whatever is not right is kept (first sighting of each)."""

    node: Node
    content: Content
    wrong_visible: dict[str, str] = field(default_factory=dict)
    wrong_offers: dict[str, str] = field(default_factory=dict)
    looks: int = 0
    _seen: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.look()  # once before anything of the node runs again
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        self.look()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.look()

    def look(self) -> None:
        self.looks += 1
        self._look_at_files()
        self._look_at_offers()

    def _look_at_files(self) -> None:
        folder = self.node.home / "downloads"
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for filename in filenames:
                if filename.startswith("."):  # a copy in progress (.NAME.p2p-partial)
                    continue
                path = os.path.join(dirpath, filename)
                name = os.path.relpath(path, folder)
                self._check_file(name, path)

    def _check_file(self, name: str, path: str) -> None:
        if name in self.wrong_visible:
            return
        if name not in self.content.expected:
            self.wrong_visible[name] = "a name nothing was downloaded under"
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._seen.get(name) == stamp:
            return
        size, sha = self.content.expected[name]
        if st.st_size != size:
            self.wrong_visible[name] = f"{st.st_size} bytes, not {size}"
            return
        with open(path, "rb") as fh:
            got = hashlib.file_digest(fh, "sha256").hexdigest()
        if got != sha:
            self.wrong_visible[name] = f"sha256 {got[:12]}, not {sha[:12]}"
            return
        self._seen[name] = stamp

    def _look_at_offers(self) -> None:
        try:
            rows = self.node.sql(
                "SELECT l.name, f.sha256, f.size FROM local_files l"
                " JOIN files f ON f.id = l.file_id WHERE l.root = 'download'"
            )
        except (sqlite3.Error, FileNotFoundError):
            return  # not created yet, or mid-recovery
        for name, sha, size in rows:
            want = self.content.expected.get(name)
            if name not in self.wrong_offers and (want is None or want != (size, sha)):
                self.wrong_offers[name] = f"offered as {size} bytes, sha256 {sha[:12]}"


# ------------------------------------------------------------ a round


@dataclass
class Ack:
    """What `p2pctl download --no-wait` reported as queued."""

    pattern: str
    download_id: int | None = None  # "queued #N"
    request_id: int | None = None  # "request R: K files"
    files: int = 1


@dataclass
class RoundResult:
    number: int
    kind: str
    cut: str = ""  # where the cut fell
    found: str = ""  # what the node found after it
    acked: list[Ack] = field(default_factory=list)
    wrong_visible: dict[str, str] = field(default_factory=dict)
    lost_acks: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    wrong_offers: dict[str, str] = field(default_factory=dict)
    integrity: str = ""
    refetched_bytes: int = 0
    seconds: float = 0.0
    cache_full: bool = False
    # A role had run on the schema before the cut, so it must be there after it.
    schema_needed: bool = False
    schema_lost: bool = False
    phases: dict[str, float] = field(default_factory=dict)  # name -> time.monotonic()

    def timeline(self) -> str:
        """Seconds from the round's start to each phase, for finding where time goes."""
        t0 = self.phases.get("begin", 0.0)
        return " ".join(f"{k} {v - t0:.1f}" for k, v in self.phases.items() if k != "begin")

    @property
    def problems(self) -> list[str]:
        out = [f"wrong visible {n}: {why}" for n, why in self.wrong_visible.items()]
        out += [f"lost acknowledged: {a}" for a in self.lost_acks]
        out += [f"duplicate: {d}" for d in self.duplicates]
        out += [f"wrong offer {n}: {why}" for n, why in self.wrong_offers.items()]
        if self.schema_lost:
            out.append("the schema a role had run on was lost")
        if self.integrity != "ok":
            out.append(f"integrity_check: {self.integrity}")
        if self.cache_full:
            out.append("LazyFS's cache was full (writes went through): the round proves nothing")
        return out

    def row(self) -> list[Any]:
        return [
            self.number,
            self.kind,
            self.cut,
            self.found,
            len(self.wrong_visible),
            len(self.lost_acks),
            len(self.duplicates),
            len(self.wrong_offers),
            self.integrity,
            f"{self.refetched_bytes / 2**20:.1f}",
            f"{self.seconds:.0f}",
        ]


HEADERS = [
    "round",
    "cut point",
    "where it fell",
    "found after the reboot",
    "wrong visible",
    "acks lost",
    "fetched twice",
    "wrong offers",
    "integrity",
    "MiB refetched",
    "s",
]


class Rounds:
    """Power-loss rounds against one seeder, each leecher in a new home on one mount."""

    def __init__(self, seeder: Node, content: Content, fs: LazyFS, udp_port: int) -> None:
        self.seeder = seeder
        self.content = content
        self.fs = fs
        self.udp_port = udp_port
        self.results: list[RoundResult] = []
        self.nodes: list[Node] = []

    def run(self, kind: str, rng: random.Random, *, max_delay: float = 0.0) -> RoundResult:
        result = RoundResult(len(self.results) + 1, kind)
        self.results.append(result)
        started = time.monotonic()
        result.phases["begin"] = started
        served_before = self._served()
        # No web program: a user's node runs it, but it is no part of what is tested here
        # and a 2-core CI machine has better use for its start-up.
        leech = Node(
            "leech", self.udp_port, home=self.fs.mnt / f"r{result.number}", P2P_WEB_PORT="off"
        )
        (leech.home / "logs").mkdir(exist_ok=True)
        (leech.home / "shared").mkdir(exist_ok=True)
        self.nodes.append(leech)
        if kind == "fresh":
            self._cut_fresh(leech, rng, result)
        else:
            self._start(leech)
            result.phases["started"] = time.monotonic()
            self._wait_known(leech)
            result.phases["known"] = time.monotonic()
            getattr(self, f"_cut_{kind}")(leech, rng, result, max_delay)
        result.phases["cut"] = time.monotonic()
        self._power_cut(leech, result)
        result.phases["rebooted"] = time.monotonic()
        self._after(leech, result)
        needed = sum(self._bytes_of(a.pattern) for a in result.acked)
        result.refetched_bytes = self._served() - served_before - needed
        result.seconds = time.monotonic() - started
        return result

    # ------------------------------------------------------------ before the cut

    def _start(self, leech: Node) -> None:
        """supervisord, and every role beating from this start (a heartbeat row that
        survived the cut says nothing)."""
        since = time.time()
        leech.start_supervised(wait=False)

        def started() -> bool:
            assert leech.supervisord is not None and leech.supervisord.poll() is None
            rows = dict(leech.sql("SELECT role, started_at FROM heartbeats"))
            return all(rows.get(role, 0) >= since - 1 for role in ROLES)

        wait_until(started, START_TIMEOUT, what=f"{leech}'s roles to start")

    def _bytes_of(self, pattern: str) -> int:
        return sum(
            size
            for name, (size, _) in self.content.expected.items()
            if name == pattern or (pattern.endswith("/") and name.startswith(pattern))
        )

    def _served(self) -> int:
        """Bytes the seeder's server has served in all, once its count stops moving (it
        records every half second): the leecher's own counters may die in a cut."""
        query = "SELECT coalesce(sum(bytes), 0) FROM upload_totals"
        last = -1
        for _ in range(100):
            now = int(self.seeder.scalar(query) or 0)
            if now == last:
                return now
            last = now
            time.sleep(0.7)  # longer than the server's recording period
        raise AssertionError("the seeder never stopped serving")

    def _wait_known(self, leech: Node) -> None:
        def known() -> bool:
            names = (self.content.big, self.content.small_names[-1])
            query = "SELECT count(DISTINCT name) FROM holdings WHERE name IN (?, ?)"
            return int(leech.scalar(query, names) or 0) == 2

        wait_until(known, START_TIMEOUT, what=f"{leech} to know the seeder's files")

    def _queue(self, leech: Node, pattern: str, result: RoundResult) -> Ack:
        done = leech.p2pctl("download", pattern, "--no-wait")
        assert done.returncode == 0, f"p2pctl download {pattern}: {done.stdout}{done.stderr}"
        ack = Ack(pattern)
        if m := re.search(r"queued #(\d+)", done.stdout):
            ack.download_id = int(m[1])
        elif m := re.search(r"request (\d+): (\d+) files", done.stdout):
            ack.request_id, ack.files = int(m[1]), int(m[2])
        else:
            raise AssertionError(f"p2pctl download {pattern} said: {done.stdout}")
        result.acked.append(ack)
        return ack

    def _cut_big(self, leech: Node, rng: random.Random, result: RoundResult, _: float) -> None:
        ack = self._queue(leech, self.content.big, result)
        size = self.content.expected[self.content.big][0]
        share = rng.uniform(0.1, 0.7)
        query = "SELECT bytes_done, status FROM downloads WHERE id = ?"
        wait_until(
            lambda: any(
                done >= share * size or status not in ("queued", "active")
                for done, status in leech.sql(query, (ack.download_id,))
            ),
            DONE_TIMEOUT,
            interval=0.01,
            what="the big file to get that far",
        )
        done = leech.scalar("SELECT bytes_done FROM downloads WHERE id = ?", (ack.download_id,))
        result.cut = f"big file {100 * int(done) // size}% recorded"

    def _cut_batch(self, leech: Node, rng: random.Random, result: RoundResult, _: float) -> None:
        """At some files done, or (half the rounds) at some files linked into the folder,
        which may fall between a group's links and its record."""
        ack = self._queue(leech, self.content.many, result)
        target = max(1, int(rng.uniform(0.05, 0.9) * ack.files))
        query = "SELECT count(*) FROM downloads WHERE request_id = ? AND status = 'done'"
        folder = leech.home / "downloads" / self.content.many

        def linked() -> int:
            return sum(len(files) for _, _, files in os.walk(folder))

        if rng.random() < 0.5:
            what, count = "done", lambda: int(leech.scalar(query, (ack.request_id,)) or 0)
        else:
            what, count = "linked", linked
        wait_until(
            lambda: count() >= target,
            DONE_TIMEOUT,
            interval=0.005,
            what=f"{target} small files {what}",
        )
        done = int(leech.scalar(query, (ack.request_id,)) or 0)
        result.cut = f"{linked()} linked, {done}/{ack.files} done"

    def _cut_queued(
        self, leech: Node, rng: random.Random, result: RoundResult, max_delay: float
    ) -> None:
        self._queue(leech, self.content.big, result)
        self._queue(leech, self.content.many, result)
        delay = rng.uniform(0, max_delay)
        if delay:
            time.sleep(delay)  # the cut point itself: what the round puts to the test
        result.cut = f"{delay:.2f} s after 'queued'"

    def _cut_publish(self, leech: Node, rng: random.Random, result: RoundResult, _: float) -> None:
        ack = self._queue(leech, self.content.big, result)
        if rng.random() < 0.5:
            what = "saved_as recorded"
            query = "SELECT saved_as IS NOT NULL FROM downloads WHERE id = ?"
            wait_until(
                lambda: leech.scalar(query, (ack.download_id,)),
                DONE_TIMEOUT,
                interval=0.002,
                what="the big file's name to be recorded",
            )
        else:
            what = "file linked"
            path = leech.home / "downloads" / self.content.big
            wait_until(path.exists, DONE_TIMEOUT, interval=0.002, what="the big file to be linked")
        status = leech.scalar("SELECT status FROM downloads WHERE id = ?", (ack.download_id,))
        result.cut = f"big file: {what} ({status})"

    def _cut_fresh(self, leech: Node, rng: random.Random, result: RoundResult) -> None:
        """A role is running as soon as its first heartbeat is in: from then on the
        schema it runs on must survive."""
        leech.start_supervised(wait=False)
        wait_until(
            lambda: leech.scalar("SELECT count(*) FROM heartbeats"),
            START_TIMEOUT,
            interval=0.005,
            what="a role's first heartbeat",
        )
        delay = rng.uniform(0, 0.5)
        if delay:
            time.sleep(delay)  # the cut point itself: what the round puts to the test
        result.cut = f"{delay:.2f} s after the first heartbeat"
        result.schema_needed = True

    # ------------------------------------------------------------ the cut and after

    def _power_cut(self, leech: Node, result: RoundResult) -> None:
        kill_node(leech)
        self.fs.clear_cache()
        self.fs.reboot()
        result.cache_full = self.fs.cache_was_full()

    def _after(self, leech: Node, result: RoundResult) -> None:
        result.found = self._found(leech, result)
        watch = Watch(leech, self.content)
        watch.start()
        try:
            self._start(leech)
            result.phases["back"] = time.monotonic()
            result.lost_acks = self._lost_acks(leech, result.acked)
            self._wait_all_done(leech, result)
            self._wait_indexed(leech)
        finally:
            watch.stop()
            # SIGKILL, not SIGTERM: the round is over, and its checks read only what is
            # durable or committed (a clean stop is the other reliability tests' subject).
            kill_node(leech)
        result.phases["after"] = time.monotonic()
        result.wrong_visible = watch.wrong_visible
        result.wrong_offers = watch.wrong_offers
        result.duplicates = self._duplicates(leech)
        result.integrity = _integrity(leech)

    def _found(self, leech: Node, result: RoundResult) -> str:
        """What survived, before the node runs again."""
        if not leech.db_path.exists():
            result.schema_lost = result.schema_needed
            return "no database"
        try:
            rows = leech.sql("SELECT status, count(*) FROM downloads GROUP BY status")
        except sqlite3.Error as exc:
            result.schema_lost = result.schema_needed
            return f"database: {exc}"
        files = sum(len(f) for _, _, f in os.walk(leech.home / "downloads"))
        states = ", ".join(f"{n} {s}" for s, n in sorted(rows)) or "no downloads"
        return f"{states}; {files} files"

    def _lost_acks(self, leech: Node, acked: list[Ack]) -> list[str]:
        lost = []
        for ack in acked:
            if ack.download_id is not None:
                n = leech.scalar("SELECT count(*) FROM downloads WHERE id = ?", (ack.download_id,))
                if not n:
                    lost.append(f"download #{ack.download_id} ({ack.pattern})")
            else:
                n = leech.scalar(
                    "SELECT count(DISTINCT name) FROM downloads WHERE request_id = ?",
                    (ack.request_id,),
                )
                if int(n or 0) != ack.files:
                    lost.append(f"request {ack.request_id}: {n} of {ack.files} downloads")
        return lost

    def _wait_all_done(self, leech: Node, result: RoundResult) -> None:
        """Every acknowledged download ends; one that ends other than done is lost."""
        ids = [a.download_id for a in result.acked if a.download_id is not None]
        requests = [a.request_id for a in result.acked if a.request_id is not None]
        marks = ",".join("?" * len(ids)) or "NULL"
        rmarks = ",".join("?" * len(requests)) or "NULL"
        where = f"(id IN ({marks}) OR request_id IN ({rmarks}))"
        wait_until(
            lambda: (
                not leech.scalar(
                    f"SELECT count(*) FROM downloads WHERE {where}"
                    " AND status IN ('queued', 'active', 'waiting')",
                    (*ids, *requests),
                )
            ),
            DONE_TIMEOUT,
            interval=0.2,
            what=f"{leech}: every acknowledged download to end",
        )
        # A download that ends other than done is lost, unless another one (the node's
        # repair of a damaged file) got the same name done.
        done = {r[0] for r in leech.sql("SELECT name FROM downloads WHERE status = 'done'")}
        for did, name, status, reason in leech.sql(
            f"SELECT id, name, status, reason FROM downloads WHERE {where} AND status != 'done'",
            (*ids, *requests),
        ):
            if name not in done:
                result.lost_acks.append(f"download #{did} ({name}) ended {status}: {reason}")

    def _wait_indexed(self, leech: Node) -> None:
        """The server has indexed the download folder as it now is, every file with its
        present size and mtime (so a wrong offer, if any, has had its chance to show)."""

        def indexed() -> bool:
            folder = leech.home / "downloads"
            on_disk = {}
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for f in filenames:
                    if not f.startswith("."):
                        st = os.stat(os.path.join(dirpath, f))
                        name = os.path.relpath(os.path.join(dirpath, f), folder)
                        on_disk[name] = (st.st_size, st.st_mtime_ns)
            rows = leech.sql("SELECT name, size, mtime_ns FROM local_files WHERE root = 'download'")
            return on_disk == {name: (size, mtime) for name, size, mtime in rows}

        wait_until(indexed, START_TIMEOUT, interval=0.2, what=f"{leech}: the index to catch up")

    def _duplicates(self, leech: Node) -> list[str]:
        out = []
        for name, n in leech.sql(
            "SELECT name, count(*) FROM downloads WHERE status = 'done' GROUP BY sha256, name"
            " HAVING count(*) > 1"
        ):
            out.append(f"{name} done {n} times")
        for (saved,) in leech.sql("SELECT saved_as FROM downloads WHERE status = 'done'"):
            if saved not in self.content.expected:
                out.append(f"published as {saved}")
        return out

    def close(self, *, keep: bool = False) -> None:
        for node in self.nodes:
            if node.supervisord is not None:
                kill_node(node)
        if keep:
            self.fs.keep_everything()
            print(f"kept {self.fs.backing} for inspection")
        else:
            for node in self.nodes:
                shutil.rmtree(node.home, ignore_errors=True)


def _integrity(node: Node) -> str:
    conn = sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True, timeout=30)
    try:
        return "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()
