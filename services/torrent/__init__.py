"""p2p-torrent: BitTorrent through the libtorrent bindings, an optional extra.

metainfo.py (bencode, the v1 info dictionary, piece plans, magnet links: pure code),
pieces.py (SHA-1 of pieces read from disk), make.py (`p2pctl torrent`: a torrent from
files this node holds, with hashes cached per file content), role.py (the supervised
program: one libtorrent session seeding every torrent made here).
"""

from __future__ import annotations

from types import ModuleType

NOT_INSTALLED = (
    "BitTorrent needs the libtorrent bindings, which are not installed: "
    "pip install 'p2pshare[bittorrent]'"
)


def load_libtorrent() -> ModuleType | None:
    """The libtorrent module, or None when the optional extra is not installed."""
    try:
        import libtorrent
    except ImportError:
        return None
    return libtorrent
