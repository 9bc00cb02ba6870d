"""`p2pctl download 'magnet:?...'` and `p2pctl download file.torrent`: a BitTorrent
download queued in the database for p2p-torrent, then followed like any other.

What the user brings is checked here in pure code (`services.torrent.metainfo`): a
malformed link or .torrent, or one whose paths would leave the download folder, gets one
sentence and writes nothing. libtorrent itself runs only in p2p-torrent.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import click

from p2pshare.cli.context import Ctl, NodeNotRunning, UserError
from p2pshare.db import queueing, reports
from p2pshare.db import torrent_queue as tq
from p2pshare.services.torrent import hints
from p2pshare.services.torrent import metainfo as mi
from p2pshare.services.units import human_bytes

NOT_INSTALLED = (
    "this node's p2p-torrent cannot fetch: the libtorrent bindings are not installed "
    "where the node runs (pip install 'p2pshare[bittorrent]', then p2pctl restart)"
)


def is_torrent(name: str) -> bool:
    """A magnet link, or a .torrent file that exists here (a name ending in .torrent that is
    no file here is a name on the network, as any other)."""
    return name.lower().startswith("magnet:") or (
        name.lower().endswith(".torrent") and Path(name).expanduser().is_file()
    )


def check_peer(text: str) -> str:
    """HOST:PORT with an IP address (IPv6 in brackets). Raises UserError."""
    host, sep, port = text.rpartition(":")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        address, number = None, 0
    if not sep or address is None or not 0 < number < 65536:
        raise UserError(f"--peer {text!r} is not IP:PORT (such as 127.0.0.1:6881)")
    return f"[{address}]:{number}" if address.version == 6 else f"{address}:{number}"


def warn_of_hints(found: hints.Hints, what: str) -> None:
    """One line on stderr for a malformed SHA-256 hint, which p2p-torrent ignores."""
    if found.warning:
        click.echo(f"warning: {what}: {found.warning}", err=True)


def hints_for(req: tq.TorrentRequest) -> hints.Hints:
    """The request's SHA-256 hints (already checked: no warning twice)."""
    try:
        if req.metainfo is not None:
            return hints.from_torrent(req.metainfo)
        return hints.from_magnet(req.magnet or "")
    except mi.MetainfoError:
        return hints.Hints()


def lan_words(ctl: Ctl, req: tq.TorrentRequest) -> str:
    """'; 1 of 2 files held by p2pshare peers' when its hints name content they offer."""
    found = hints_for(req)
    if not found.files:
        return ""
    with ctl.database.read() as conn:
        held = tq.offered_on_lan(conn, [(h.sha256, h.size) for h in found.files])
    return f"; {held} of {len(found.files)} files held by p2pshare peers" if held else ""


def request_for(name: str, peers: list[str]) -> tq.TorrentRequest:
    """The request a magnet link or .torrent makes. Raises UserError."""
    if name.lower().startswith("magnet:"):
        try:
            magnet = mi.parse_magnet(name)
        except mi.MetainfoError as exc:
            raise UserError(f"that magnet link is refused: {exc}") from None
        warn_of_hints(hints.from_magnet(name), "that magnet link")
        shown = magnet.name if magnet.name and magnet.name.isprintable() else magnet.info_hash
        return tq.TorrentRequest(name, magnet.info_hash, shown, 0, name, None, peers, None, None)
    path = Path(name).expanduser()
    try:
        if path.stat().st_size > mi.MAX_METAINFO:
            raise UserError(f"{name} is too large to be a torrent ({path.stat().st_size} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        meta = mi.parse_torrent(data)
    except mi.MetainfoError as exc:
        raise UserError(f"{name} is refused: {exc}") from None
    warn_of_hints(hints.from_torrent(data), name)
    shown = f"{meta.name}/" if meta.folder else meta.name
    return tq.TorrentRequest(
        str(path.resolve()), meta.info_hash, shown, meta.size, None, data, peers,
        len(meta.files), meta.piece_size,
    )  # fmt: skip


def require_torrent_role(ctl: Ctl) -> None:
    """p2p-torrent runs and can fetch. Raises NodeNotRunning, UserError."""
    roles = {r.role: r for r in ctl.require_running()}
    with ctl.database.read() as conn:
        beats = {r.role: r for r in reports.role_statuses(conn, now=time.time(), with_web=True)}
        state = tq.torrent_role_state(conn)
    role = beats.get("torrent") or roles.get("torrent")
    if role is None or not role.alive:
        raise NodeNotRunning(
            "the p2p-torrent program of this node is not running; check p2pctl status, "
            "or restart the node with p2pctl restart"
        )
    if state.get("available") == "no":
        raise UserError(NOT_INSTALLED)
    if state.get("serving") != "yes":
        raise UserError(f"this node's p2p-torrent fetches nothing: {role.detail}")


def download_torrent(ctl: Ctl, name: str, peers: tuple[str, ...], no_wait: bool) -> None:
    """Queue a magnet link or .torrent for p2p-torrent and follow it."""
    req = request_for(name, [check_peer(p) for p in peers])
    require_torrent_role(ctl)
    try:
        with ctl.database.write(durable=True) as conn:
            queued = tq.queue_torrent(conn, req, now=time.time())
    except tq.AlreadyFetched as exc:
        click.echo(f"already here: {ctl.settings.download_dir / exc.saved_as}")
        return  # what the user wanted is true: exit 0, as for a name on the network
    verb = "queued" if queued.new else "already downloading"
    size = human_bytes(queued.size) if queued.size else "size known once peers send it"
    lan = lan_words(ctl, req)
    click.echo(
        f"{verb} #{queued.download_id}: {queued.name} ({size}, BitTorrent {req.info_hash}{lan})"
    )
    if no_wait:
        return
    from p2pshare.cli.follow import follow  # tqdm: only when following

    candidate = queueing.Candidate(0, queued.name, "", queued.size, 0)
    follow(
        ctl,
        queueing.Queued(
            queued.request_id,
            req.pattern,
            "torrent",
            [queued.download_id],
            int(queued.new),
            [],
            queued.size,
            [candidate],
        ),  # fmt: skip
        role="torrent",
    )
    with ctl.database.read() as conn:
        note = tq.done_note(conn, queued.download_id)
    if note:
        click.echo(note)  # where it came from: p2pshare peers, BitTorrent or both
