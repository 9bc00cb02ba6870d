"""A BitTorrent swarm of one file on loopback, driven by the libtorrent Python package.

DHT, local peer discovery, UPnP, NAT-PMP and uTP are off; the leecher is told
each seeder's address directly. Seeders can be rate-limited like p2pshare's
P2P_UPLOAD_LIMIT. Run as a script so the swarm lives in its own processes:

    python bench/lt_swarm.py FILE SEEDERS UPLOAD_LIMIT DEST_DIR   -> prints seconds
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

PIECE_SIZE = 1024 * 1024
# The stable API of the libtorrent 2.x bindings still warns on these calls.
warnings.filterwarnings("ignore", category=DeprecationWarning)
TIMEOUT = 600.0


def _session(port: int, upload_limit: int = 0) -> Any:
    import libtorrent as lt

    settings = {
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        "allow_multiple_connections_per_ip": True,
        "upload_rate_limit": upload_limit,
        "alert_mask": 0,
    }
    session = lt.session(settings)
    # libtorrent exempts peers on a local network (loopback included) from rate
    # limits; put every loopback peer in the global class so the limit applies.
    loopback = lt.ip_filter()
    loopback.add_rule("127.0.0.0", "127.255.255.255", 1 << lt.session.global_peer_class_id)
    session.set_peer_class_filter(loopback)
    return session


def make_torrent(path: Path) -> Any:
    import libtorrent as lt

    fs = lt.file_storage()
    lt.add_files(fs, str(path))
    t = lt.create_torrent(fs, PIECE_SIZE)
    lt.set_piece_hashes(t, str(path.parent))
    return lt.torrent_info(t.generate())


def run(path: Path, seeders: int, upload_limit: int, dest: Path) -> float:
    import libtorrent as lt

    info = make_torrent(path)
    seeds = []
    for _ in range(seeders):
        s = _session(0, upload_limit)
        s.add_torrent(
            {"ti": info, "save_path": str(path.parent), "flags": lt.torrent_flags.seed_mode}
        )
        seeds.append(s)
    time.sleep(0.5)
    leech = _session(0)
    handle = leech.add_torrent({"ti": info, "save_path": str(dest)})
    started = time.perf_counter()
    for s in seeds:
        handle.connect_peer(("127.0.0.1", s.listen_port()))
    while not handle.status().is_seeding:
        if time.perf_counter() - started > TIMEOUT:
            raise TimeoutError("libtorrent swarm did not finish")
        time.sleep(0.02)
    return time.perf_counter() - started


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: lt_swarm.py FILE SEEDERS UPLOAD_LIMIT DEST_DIR")
    with tempfile.TemporaryDirectory(dir=sys.argv[4]) as out:
        print(f"{run(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(out)):.4f}")
