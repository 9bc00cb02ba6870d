"""Power cuts at random moments (issue 35): N rounds (default 20), each a leecher under
supervisord with its whole P2P_HOME on LazyFS cut at a random point of a random kind
(the big file mid-way, a small-file batch, a request just queued, a publish, a fresh
node's first second), then rebooted and started again; the table says where each cut
fell, what the node found, and what must be zero (tests/reliability/powerloss.py).

    python bench/powerloss.py                      # 20 rounds, 64 MiB + 300 small files
    python bench/powerloss.py --rounds 5 --kinds batch publish --seed 7

Loopback only: the nodes bind 127.0.0.1 and announce to 127.255.255.255. LazyFS is built
from ../shared/tools/powerloss (P2P_POWERLOSS_TOOLS) by its build.sh.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in ("integration", "reliability"):  # the reliability harness, as the tests use it
    sys.path.insert(0, str(HERE.parent / "tests" / folder))

from node import Node, pick_udp_port  # noqa: E402
from powerloss import (  # noqa: E402
    HEADERS,
    KINDS,
    LazyFS,
    Rounds,
    Unavailable,
    build_lazyfs,
    seed_content,
)
from tabulate import tabulate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--seed", type=int, default=None, help="repeat a run's cut points")
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--small-files", type=int, default=300)
    parser.add_argument(
        "--upload-limit", type=int, default=16_000_000, help="the seeder's, bytes/s"
    )
    parser.add_argument("--max-delay", type=float, default=1.0, help="'queued': cut within")
    parser.add_argument("--keep", action="store_true", help="keep the homes and LazyFS state")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    try:
        build_lazyfs()
        fs = LazyFS(cache_size="1gb")
        fs.mount()
    except Unavailable as exc:
        print(f"power loss cannot be simulated here: {exc}")
        return 2
    seeder = Node("seed", pick_udp_port(), P2P_UPLOAD_LIMIT=args.upload_limit)
    content = seed_content(seeder, big_mib=args.big_mib, small_files=args.small_files, rng=rng)
    seeder.start(("server", "announcer", "listener"))
    rounds = Rounds(seeder, content, fs, seeder.udp_port)
    try:
        for _ in range(args.rounds):
            r = rounds.run(rng.choice(args.kinds), rng, max_delay=args.max_delay)
            print(tabulate([r.row()], headers=HEADERS), flush=True)
            for problem in r.problems:
                print(f"  {problem}")
    finally:
        rounds.close(keep=args.keep)
        seeder.stop()
        fs.close() if not args.keep else fs.umount()
        if not args.keep:
            shutil.rmtree(seeder.home, ignore_errors=True)
    results = rounds.results
    print(f"\n{len(results)} rounds, seed {seed} (--seed {seed} repeats them)")
    print(tabulate([r.row() for r in results], headers=HEADERS))
    totals = {
        "wrong files visible": sum(len(r.wrong_visible) for r in results),
        "acknowledged requests lost": sum(len(r.lost_acks) for r in results),
        "downloads fetched twice": sum(len(r.duplicates) for r in results),
        "wrong offers": sum(len(r.wrong_offers) for r in results),
        "integrity_check not ok": sum(r.integrity != "ok" for r in results),
        "schemas lost": sum(r.schema_lost for r in results),
        "rounds under a full LazyFS cache": sum(r.cache_full for r in results),
    }
    print(tabulate(totals.items(), headers=["goal: 0", "found"]))
    return 0 if not any(totals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
