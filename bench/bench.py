"""p2pshare against the tools a user would pick instead, measured in one run, as ratios.

    python bench/bench.py [--size-mib 1024] [--reps 3] [--only NAME ...]

Every node runs under its own supervisord with its own P2P_HOME, on loopback
(P2P_BIND=127.0.0.1, P2P_BROADCAST=127.255.255.255). References are measured
in the same run: a bare sendfile -> recv_into copy always; curl and aria2c
from nginx, and a libtorrent swarm when those are installed (skipped with a note
otherwise; the README says how to install them). Prints a table and writes the
raw figures to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodes import BenchNode, wait_for  # noqa: E402
from refcopy import fetch  # noqa: E402

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
RATE_LIMIT = 32 * MIB  # per seeder in the rate-limited scenario
CATALOG_FILES = 10_000
# Plain HTTP downloads from nginx a user might use instead, and the goal against each.
HTTP_CLIENTS = {"curl": ">= 1.0x", "aria2c": "reference"}


@dataclass
class Row:
    scenario: str
    p2pshare: str
    reference: str
    ratio: str
    rss: str = ""
    goal: str = ""
    raw: dict[str, object] = field(default_factory=dict)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def free_udp_port() -> int:
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port")


class Bench:
    def __init__(self, root: Path, size: int, reps: int) -> None:
        self.root = root
        self.size = size
        self.reps = reps
        self.udp = free_udp_port()
        self.nodes: list[BenchNode] = []
        self.rows: list[Row] = []
        self.big = root / "data" / "big.bin"

    # ------------------------------------------------------------ helpers

    def node(self, label: str, **settings: object) -> BenchNode:
        n = BenchNode(self.root, label, self.udp, **settings)
        self.nodes.append(n)
        return n

    def stop_all(self) -> None:
        for n in self.nodes:
            n.stop()
        self.nodes.clear()

    def make_big(self) -> None:
        self.big.parent.mkdir(parents=True, exist_ok=True)
        if self.big.exists() and self.big.stat().st_size == self.size:
            return
        with open(self.big, "wb") as fh:
            left = self.size
            while left:
                n = min(left, 64 * MIB)
                fh.write(os.urandom(n))
                left -= n

    def seed(self, nodes: list[BenchNode], name: str = "big.bin") -> None:
        """Hard-link the test file into each seeder's share folder (no extra disk)."""
        for n in nodes:
            os.link(self.big, n.share / name)

    def download(self, node: BenchNode, name: str) -> tuple[float, int]:
        """Queue a download, wait for it; returns (seconds from request to done, db writes)."""
        writes_before = node.db_writes()
        result = node.p2pctl("download", name, "--no-wait")
        if result.returncode:
            raise RuntimeError(f"p2pctl download failed: {result.stderr.strip()}")

        def finished() -> tuple[str, float, float, str] | None:
            row = node.sql(
                "SELECT status, requested_at, finished_at, reason FROM downloads "
                "ORDER BY id DESC LIMIT 1"
            )
            return row[0] if row and row[0][0] in ("done", "failed") else None

        status, requested, done, reason = wait_for(finished, 900, "the download", 0.01)
        if status != "done":
            raise RuntimeError(f"download failed: {reason}")
        time.sleep(2.5)  # one heartbeat, so the write count includes the last batch
        return done - requested, node.db_writes() - writes_before

    def verify(self, node: BenchNode, name: str) -> None:
        got = subprocess.run(["cmp", str(self.big), str(node.downloads / name)])
        if got.returncode:
            raise RuntimeError("downloaded file differs from the original")

    # ------------------------------------------------------------ scenarios

    def transfer(self) -> None:
        """One and three seeders of the big file; references: sendfile copy, curl, libtorrent."""
        self.make_big()
        seeders = [self.node(f"seed{i}") for i in range(3)]
        leech = self.node("leech")
        for n in (*seeders, leech):
            n.start()
        for n in (*seeders, leech):
            n.wait_ready()
        self.seed(seeders[:1])
        wait_for(lambda: leech.knows("big.bin", 1), 120, "the leecher to learn the file")
        one, writes, rss_dl, rss_srv = [], [], 0.0, 0.0
        for _ in range(self.reps):
            seconds, w = self.download(leech, "big.bin")
            self.verify(leech, "big.bin")
            one.append(seconds)
            writes.append(w)
            rss_dl = max(rss_dl, leech.peak_rss_mb("downloader"))
            rss_srv = max(rss_srv, seeders[0].peak_rss_mb("server"))
            leech.forget_download("big.bin")
        ref = [self._refcopy() for _ in range(self.reps)]
        http = self._http_clients()
        one_rate = mbps(self.size, median(one))
        self.rows.append(
            Row(
                f"1 seeder, {self.size // MIB} MiB, verified vs sendfile->recv_into copy",
                f"{one_rate:.0f} MB/s",
                f"{mbps(self.size, median(ref)):.0f} MB/s",
                f"{median(ref) / median(one):.2f}x",
                f"dl {rss_dl:.0f} MB, srv {rss_srv:.0f} MB",
                ">= 0.8x; RSS < 100 MB",
                {"p2pshare_s": one, "reference_s": ref},
            )
        )
        for client, goal in HTTP_CLIENTS.items():
            times = http.get(client)
            if not times:
                self.rows.append(
                    Row(
                        f"1 seeder vs {client} from nginx",
                        "-",
                        "skipped",
                        "-",
                        "",
                        goal,
                        {"note": f"nginx or {client} not installed"},
                    )
                )
                continue
            self.rows.append(
                Row(
                    f"1 seeder, {self.size // MIB} MiB vs {client} from nginx",
                    f"{one_rate:.0f} MB/s",
                    f"{mbps(self.size, median(times)):.0f} MB/s",
                    f"{median(times) / median(one):.2f}x",
                    "",
                    goal,
                    {f"{client}_s": times},
                )
            )
        self.rows.append(
            Row(
                f"downloader db write transactions per {self.size // MIB} MiB",
                f"{median(writes):.0f}",
                "-",
                "-",
                "",
                "a few hundred at most",
                {"writes": writes},
            )
        )
        self.seed(seeders[1:])
        wait_for(lambda: leech.knows("big.bin", 3), 120, "the leecher to see three seeders")
        three = []
        for _ in range(self.reps):
            seconds, _w = self.download(leech, "big.bin")
            self.verify(leech, "big.bin")
            three.append(seconds)
            leech.forget_download("big.bin")
        self.rows.append(
            Row(
                f"3 seeders, {self.size // MIB} MiB vs 1 seeder",
                f"{mbps(self.size, median(three)):.0f} MB/s",
                f"{one_rate:.0f} MB/s",
                f"{median(one) / median(three):.2f}x",
                "",
                ">= 1.0x",
                {"three_s": three},
            )
        )
        lt3 = self._libtorrent(3, 0)
        if lt3:
            self.rows.append(
                Row(
                    f"3 seeders, {self.size // MIB} MiB vs libtorrent 3 seeders",
                    f"{mbps(self.size, median(three)):.0f} MB/s",
                    f"{mbps(self.size, median(lt3)):.0f} MB/s",
                    f"{median(lt3) / median(three):.2f}x",
                    "",
                    ">= 2.0x",
                    {"libtorrent_s": lt3},
                )
            )
        else:
            self.rows.append(
                Row(
                    "3 seeders vs libtorrent",
                    "-",
                    "skipped",
                    "-",
                    "",
                    ">= 2.0x",
                    {"note": "python libtorrent not installed"},
                )
            )
        self.stop_all()

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

    def _http_clients(self) -> dict[str, list[float]]:
        """Seconds for each installed HTTP client to fetch the big file from nginx."""
        nginx = shutil.which("nginx")
        clients = {name: shutil.which(name) for name in HTTP_CLIENTS}
        if not nginx or not any(clients.values()):
            return {}
        conf_dir = self.root / "nginx"
        conf_dir.mkdir(exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (conf_dir / "nginx.conf").write_text(f"""
daemon off; worker_processes 1; pid {conf_dir}/nginx.pid; error_log {conf_dir}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  server {{ listen 127.0.0.1:{port}; root {self.big.parent}; }} }}
""")
        proc = subprocess.Popen(
            [nginx, "-c", str(conf_dir / "nginx.conf"), "-p", str(conf_dir)],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                lambda: socket.create_connection(("127.0.0.1", port)).close() or True,
                10,
                "nginx",
                0.05,
            )
            url = f"http://127.0.0.1:{port}/{self.big.name}"
            dest = self.root / "http.out"
            commands = {
                "curl": ["-sSf", "-o", str(dest), url],
                "aria2c": [
                    "-q",
                    "-x1",
                    "--allow-overwrite=true",
                    "--file-allocation=none",
                    "-d",
                    str(dest.parent),
                    "-o",
                    dest.name,
                    url,
                ],
            }
            out: dict[str, list[float]] = {}
            for name, path in clients.items():
                if path is None:
                    continue
                for _ in range(self.reps):
                    started = time.perf_counter()
                    subprocess.run([path, *commands[name]], check=True)
                    out.setdefault(name, []).append(time.perf_counter() - started)
                    dest.unlink()
            return out
        finally:
            proc.terminate()
            proc.wait()

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
        for n in (*seeders, leech):
            n.start()
        for n in (*seeders, leech):
            n.wait_ready()
        os.link(path, seeders[0].share / "limited.bin")
        wait_for(lambda: leech.knows("limited.bin", 1), 60, "the leecher to learn the file")
        one = []
        for _ in range(self.reps):
            one.append(self.download(leech, "limited.bin")[0])
            leech.forget_download("limited.bin")
        for n in seeders[1:]:
            os.link(path, n.share / "limited.bin")
        wait_for(lambda: leech.knows("limited.bin", 4), 60, "the leecher to see four seeders")
        four = []
        for _ in range(self.reps):
            four.append(self.download(leech, "limited.bin")[0])
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
        from p2pshare.services.indexer import ShareIndexer
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
    "limit": Bench.rate_limited,
    "discovery": Bench.discovery,
    "catalog": Bench.catalog,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="p2pbench"))
    root.chmod(0o755)  # nginx's workers run as an unprivileged user and must read the file
    bench = Bench(root, args.size_mib * MIB, args.reps)
    try:
        for name in args.only or list(SCENARIOS):
            print(f"== {name}", flush=True)
            SCENARIOS[name](bench)
    finally:
        bench.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    print(
        tabulate(
            [[r.scenario, r.p2pshare, r.reference, r.ratio, r.rss, r.goal] for r in bench.rows],
            headers=["scenario", "p2pshare", "reference", "ratio", "peak RSS", "goal"],
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in bench.rows], indent=2))
    print(f"raw figures: {args.out}")


if __name__ == "__main__":
    main()
