"""What `p2pctl torrent` costs per GiB: the first torrent of a file (every SHA-1 piece
hashed, then cached in torrent_pieces) and the next ones (cache hits), beside `sha1sum`
of the same file in the same run. CPU-seconds from getrusage, wall time beside them.

    python bench/torrent_hashes.py --size-mib 1024 --dir /dev/shm
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from p2pshare.db.engine import Database
from p2pshare.services.server.indexer import ShareIndexer
from p2pshare.services.settings import load_settings
from p2pshare.services.torrent import make


def cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="p2p-thash", dir=args.dir))
    try:
        settings = load_settings(
            env={"P2P_HOME": str(home), "P2P_BROADCAST": "127.255.255.255", "P2P_USERNAME": "b"}
        )
        settings.make_dirs()
        path = settings.share_dir / "big.bin"
        with open(path, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        past = time.time() - 30
        os.utime(path, (past, past))
        database = Database.open(settings.db_path)
        ShareIndexer(database, settings).step(now=time.time() + 5)
        gib = args.size_mib / 1024
        print(f"{args.size_mib} MiB on {args.dir}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
        for rep in range(args.reps):
            with database.write() as s:  # a cold cache every repetition
                s.exec_driver_sql("DELETE FROM torrent_pieces")
            rows = []
            for label in ("first (hash + cache)", "again (cached)"):
                c0, w0 = cpu(resource.RUSAGE_SELF), time.perf_counter()
                made = make.make_torrent(settings, database, "big.bin", out=home / "t.torrent")
                c1, w1 = cpu(resource.RUSAGE_SELF), time.perf_counter()
                rows.append((label, (c1 - c0) / gib, (w1 - w0) / gib, made.hashed_bytes))
            c0, w0 = cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run(["sha1sum", str(path)], check=True, capture_output=True)
            c1, w1 = cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
            ref = (c1 - c0) / gib
            rows.append(("sha1sum (reference)", ref, (w1 - w0) / gib, path.stat().st_size))
            for label, c, w, hashed in rows:
                print(
                    f"rep {rep}  {label:22} {c:6.3f} CPU-s/GiB  {w:6.3f} s/GiB  "
                    f"x{c / ref:5.2f} of sha1sum's CPU  hashed {hashed / 2**20:.1f} MiB"
                )
        database.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
