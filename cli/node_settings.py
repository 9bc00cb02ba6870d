"""What `p2pctl status` says the node runs with: the settings its roles recorded.

The roles resolve their settings from their own environment, which the shell running
p2pctl need not share; so status reads `role_settings`, and uses the shell's own
settings only for a node whose roles never recorded theirs (an older version, or not
started yet). Pure code: no database, no environment.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pshare.services.settings import Settings

# Where each reported setting is read from: the first role in the list that recorded it.
SOURCES = {
    "username": ("announcer",),
    "bind": ("server", "announcer"),
    "tcp_port": ("server",),
    "udp_port": ("listener", "announcer"),
    "broadcast": ("announcer",),
    "broadcast_from": ("announcer",),
    "announce_interval": ("announcer",),
    "share_dir": ("server",),
    "download_dir": ("server", "downloader"),
    "network_key": ("listener", "announcer"),
    "encrypt": ("announcer", "server", "listener"),
    "fingerprint": ("announcer",),
}
FROM_INTERFACES = "interfaces"
FROM_SETTING = "P2P_BROADCAST"


@dataclass(frozen=True)
class NodeSettings:
    """The settings status reports; None where no role recorded one."""

    # "node": what the roles recorded; "record": the node's p2p.toml, before any role
    # recorded; "shell": this shell's settings (a node p2pctl never started)
    source: str
    username: str | None
    bind: str | None
    tcp_port: int | None
    udp_port: int | None
    # None: not known, e.g. the shell's default of every interface's broadcast address,
    # which only the announcer resolves.
    broadcast: list[str] | None
    broadcast_from: str | None  # FROM_SETTING or FROM_INTERFACES
    announce_interval: float | None
    share_dir: str | None
    download_dir: str | None
    network_key: bool | None
    versions: dict[str, str]  # role -> p2pshare version it runs
    encrypt: bool | None = None  # TLS on every connection
    fingerprint: str | None = None  # SHA-256 of this node's certificate


def from_recorded(recorded: dict[str, dict[str, str]]) -> NodeSettings:
    """The settings as the roles recorded them (`db.node.role_settings`)."""

    def get(name: str) -> str | None:
        for role in SOURCES[name]:
            if name in recorded.get(role, {}):
                return recorded[role][name]
        return None

    broadcast = get("broadcast")
    key = get("network_key")
    encrypt = get("encrypt")
    return NodeSettings(
        source="node",
        username=get("username"),
        bind=get("bind"),
        tcp_port=_int(get("tcp_port")),
        udp_port=_int(get("udp_port")),
        broadcast=None if broadcast is None else [t for t in broadcast.split(",") if t],
        broadcast_from=get("broadcast_from"),
        announce_interval=_float(get("announce_interval")),
        share_dir=get("share_dir"),
        download_dir=get("download_dir"),
        network_key=None if key is None else key == "yes",
        versions={role: v["version"] for role, v in sorted(recorded.items()) if "version" in v},
        encrypt=None if encrypt is None else encrypt == "yes",
        fingerprint=get("fingerprint"),
    )


def from_shell(settings: Settings) -> NodeSettings:
    """This shell's own settings, for a node whose roles recorded nothing."""
    return NodeSettings(
        source="shell",
        username=settings.username,
        bind=settings.bind,
        tcp_port=None,  # P2P_TCP_PORT=0 means "any"; only the `node` row knows the real one
        udp_port=settings.udp_port,
        broadcast=None if settings.broadcast is None else list(settings.broadcast),
        broadcast_from=FROM_INTERFACES if settings.broadcast is None else FROM_SETTING,
        announce_interval=settings.announce_interval,
        share_dir=str(settings.share_dir),
        download_dir=str(settings.download_dir),
        network_key=settings.keyed,
        versions={},
        encrypt=settings.encrypt,
    )


def shell_differs(shell: Settings, node: NodeSettings) -> list[str]:
    """The variables whose value in this shell differs from what the node runs with.

    Only those a user would act on: a node started from this shell would bind, be
    named, or announce differently, or not hear this one.
    """
    if node.source != "node":
        return []
    differs = []
    if node.bind is not None and node.bind != shell.bind:
        differs.append("P2P_BIND")
    if node.broadcast_from is not None and _shell_targets(shell) != _node_targets(node):
        differs.append("P2P_BROADCAST")
    if node.username is not None and node.username != shell.username:
        differs.append("P2P_USERNAME")
    if node.udp_port is not None and node.udp_port != shell.udp_port:
        differs.append("P2P_UDP_PORT")
    return differs


def _shell_targets(shell: Settings) -> tuple[str, ...] | None:
    return shell.broadcast  # None: every interface's broadcast address


def _node_targets(node: NodeSettings) -> tuple[str, ...] | None:
    if node.broadcast_from == FROM_INTERFACES:
        return None
    return tuple(node.broadcast or ())


def _int(text: str | None) -> int | None:
    """A recorded number, or None when absent or not a number (a hand-edited row)."""
    return None if text is None or not text.isdigit() else int(text)


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None
