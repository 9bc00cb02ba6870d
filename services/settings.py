"""Every setting of a node, resolved once, the same way for the roles and p2pctl.

Order: the environment, then an optional TOML config file, then defaults. The
config file is `$P2P_CONFIG` when set, else `$P2P_HOME/p2p.toml`; it uses the
same names as the environment (`P2P_SHARE_DIR = "/srv/share"`).
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from p2pshare.services.private import PRIVATE_DIR_MODE, make_private
from p2pshare.services.protocol.limits import CHUNK_ALIGN, MAX_CHUNK, MAX_USERNAME_BYTES, MIN_CHUNK
from p2pshare.services.protocol.netkey import WeakNetworkKey, check_key_strength, derive_network_key

DEFAULT_UDP_PORT = 47474
DEFAULT_ANNOUNCE_INTERVAL = 60.0
DEFAULT_WAIT_TIMEOUT = 600.0
DEFAULT_WEB_BIND = "127.0.0.1"
DEFAULT_WEB_PORT = 47480
# Per-chunk ledgers (uploads, bad_peers) keep this many days; older uploads become
# per-day totals (upload_days), so lifetime figures stay exact.
DEFAULT_HISTORY_DAYS = 30
# A century: more is a typo, and keeps day arithmetic far from float limits.
MAX_HISTORY_DAYS = 36500
# The listener's niceness (P2P_LISTENER_NICE), as Syncthing's setLowPriority lowers its
# whole process (to nice 9): discovery is bookkeeping nobody waits on by the millisecond,
# so when a LAN's machines all wake at once on a small machine the downloader, the chunk
# server and p2pctl go first. At 10 it still gets a share of a core beside a busy one
# (the kernel's weight for nice 10 is about a tenth of nice 0's), so heartbeats and the
# storm's catalogs keep coming; 19 or SCHED_IDLE would starve it beside a busy core.
DEFAULT_LISTENER_NICE = 10
MAX_NICE = 19
# A peer is forgotten after this many missed announcements.
TTL_INTERVALS = 3
MIN_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
# Each chunk is one request, and a request costs both sides far more than its bytes,
# so fewer, larger chunks cost less CPU per GiB. 256 chunks still give a LAN's handful of
# peers plenty to share, and resuming loses at most one chunk per peer.
TARGET_MAX_CHUNKS = 256
CONFIG_NAME = "p2p.toml"
# Budgets per peer (docs/security.md, "Budgets per peer"): what one peer's catalog and offers may
# make this node store. Entries: a share of a million files must fit, with room for
# its churn. Manifest rows: chunk hashes learned from the peer and not yet proven by
# downloaded bytes, about 100 bytes of database each; 2^17 of them is some 14 MB, a
# 2 TiB file at 16 MiB chunks, or 500 of the usual 256-chunk files at once. A download
# of that many chunks holds them in memory too, so this bounds the downloader's as well.
DEFAULT_PEER_CATALOG_ENTRIES = 1_500_000
DEFAULT_PEER_MANIFEST_ROWS = 1 << 17
# A config file holding the network key may be read by its owner alone (group and others:
# no read bit), as ssh insists of a private key.
OTHERS_MAY_READ = 0o044

VARIABLES = (
    "P2P_HOME",
    "P2P_SHARE_DIR",
    "P2P_DOWNLOAD_DIR",
    "P2P_USERNAME",
    "P2P_BIND",
    "P2P_TCP_PORT",
    "P2P_UDP_PORT",
    "P2P_BROADCAST",
    "P2P_ANNOUNCE_INTERVAL",
    "P2P_PEER_TTL",
    "P2P_CHUNK_SIZE",
    "P2P_UPLOAD_LIMIT",
    "P2P_NETWORK_KEY",
    "P2P_WAIT_TIMEOUT",
    "P2P_ENCRYPT",
    "P2P_WEB_BIND",
    "P2P_WEB_PORT",
    "P2P_WEB_SHARE",
    "P2P_HISTORY_DAYS",
    "P2P_TORRENT_PORT",
    "P2P_BITTORRENT",
    "P2P_BITTORRENT_DHT",
    "P2P_LISTENER_NICE",
    "P2P_PEER_CATALOG_ENTRIES",
    "P2P_PEER_MANIFEST_ROWS",
)


class SettingsError(Exception):
    """A setting whose value we refuse; the message is one sentence naming it."""


@dataclass(frozen=True)
class Settings:
    home: Path
    share_dir: Path
    download_dir: Path
    username: str
    bind: str
    tcp_port: int
    udp_port: int
    # None means "the broadcast address of every up, non-loopback interface",
    # recomputed by the announcer because interfaces come and go.
    broadcast: tuple[str, ...] | None
    announce_interval: float
    peer_ttl: float
    chunk_size: int | None
    upload_limit: int
    # P2P_NETWORK_KEY as set; the wire uses `network_key`, derived from it.
    network_secret: str | None
    # TLS on every TCP connection (P2P_ENCRYPT; auto: exactly when a network key is set).
    encrypt: bool
    # How long a download waits for a peer holding its missing chunks before it fails.
    wait_timeout: float
    # Days per-chunk rows are kept before they are rolled up into per-day totals.
    history_days: int
    config_file: Path | None
    # The web program (services/web): its address, its port (None: P2P_WEB_PORT=off, the
    # program idles) and whether it serves this node's own files at /share/.
    web_bind: str = DEFAULT_WEB_BIND
    web_port: int | None = DEFAULT_WEB_PORT
    web_share: bool = False
    # p2p-torrent (services/torrent): its port (0: any free one), whether it serves
    # (None: auto, i.e. only without a network key, which BitTorrent cannot check), and
    # whether DHT, UPnP and NAT-PMP are on.
    torrent_port: int = 0
    bittorrent: bool | None = None
    bittorrent_dht: bool = False
    # How much nicer than the other roles the listener runs (0: as started).
    listener_nice: int = DEFAULT_LISTENER_NICE
    # Budgets per peer: entries of its catalog kept, and chunk rows its manifests may
    # make this node store before bytes prove them.
    peer_catalog_entries: int = DEFAULT_PEER_CATALOG_ENTRIES
    peer_manifest_rows: int = DEFAULT_PEER_MANIFEST_ROWS

    @property
    def keyed(self) -> bool:
        """Whether a network key is set (without paying for its derivation)."""
        return self.network_secret is not None

    @cached_property
    def network_key(self) -> str | None:
        """The key every HMAC on the wire uses: P2P_NETWORK_KEY through scrypt, derived at
        first use (p2pctl, which speaks to no peer, never pays for it)."""
        return None if self.network_secret is None else derive_network_key(self.network_secret)

    @property
    def bittorrent_serves(self) -> bool:
        """Whether p2p-torrent serves: P2P_BITTORRENT=on/off, or auto (no network key)."""
        return not self.keyed if self.bittorrent is None else self.bittorrent

    @property
    def db_path(self) -> Path:
        return self.home / "p2p.db"

    @property
    def temp_dir(self) -> Path:
        return self.home / "temp"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def identity_dir(self) -> Path:
        return self.home / "identity"

    def private_paths(self) -> tuple[Path, ...]:
        """Paths under the home that must never be indexed, should a share dir contain them."""
        db = self.db_path
        paths = [
            self.temp_dir,
            self.log_dir,
            self.identity_dir,
            db,
            Path(f"{db}-wal"),
            Path(f"{db}-shm"),
            Path(f"{db}-journal"),
            self.home / CONFIG_NAME,
            self.home / "supervisor.sock",
            self.home / "supervisord.pid",
            self.home / "web-token",
        ]
        if self.config_file is not None:
            paths.append(self.config_file)
        return tuple(paths)

    def make_dirs(self) -> None:
        """Create the node's folders, its own ones private (services/private.py), and make
        an older home private. Raises OSError."""
        for path in (self.home, self.temp_dir, self.log_dir):
            path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        for path in (self.share_dir, self.download_dir):
            path.mkdir(parents=True, exist_ok=True)
        make_private(self)


def default_home(env: Mapping[str, str]) -> Path:
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "p2pshare"


def read_config_file(path: Path) -> dict[str, str]:
    """Load a TOML config file into strings keyed by variable name. Raises SettingsError."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc}") from exc
    values: dict[str, str] = {}
    for key, value in raw.items():
        if key not in VARIABLES:
            raise SettingsError(f"config file {path} sets unknown setting {key!r}")
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        values[key] = str(value)
    if "P2P_NETWORK_KEY" in values and mode & OTHERS_MAY_READ:
        # Whoever can read the key can join the network and read what it shares.
        raise SettingsError(
            f"config file {path} holds P2P_NETWORK_KEY but other users may read it "
            f"(mode {mode:04o}); run chmod 600 {path}"
        )
    return values


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting. Raises SettingsError naming the first bad variable."""
    env = os.environ if env is None else env
    explicit_config = env.get("P2P_CONFIG")
    home_hint = Path(env["P2P_HOME"]).expanduser() if env.get("P2P_HOME") else default_home(env)
    config_path = Path(explicit_config).expanduser() if explicit_config else home_hint / CONFIG_NAME
    if explicit_config and not config_path.is_file():
        raise SettingsError(f"P2P_CONFIG names {config_path}, which is not a file")
    file_values = read_config_file(config_path)

    def get(name: str) -> str | None:
        value = env.get(name)
        if value is None or value == "":
            value = file_values.get(name)
        return value if value not in (None, "") else None

    home = Path(get("P2P_HOME") or home_hint).expanduser().absolute()
    interval = _positive_float(
        "P2P_ANNOUNCE_INTERVAL", get("P2P_ANNOUNCE_INTERVAL"), DEFAULT_ANNOUNCE_INTERVAL
    )
    return Settings(
        home=home,
        share_dir=_dir("P2P_SHARE_DIR", get("P2P_SHARE_DIR"), home / "shared"),
        download_dir=_dir("P2P_DOWNLOAD_DIR", get("P2P_DOWNLOAD_DIR"), home / "downloads"),
        username=_username(get("P2P_USERNAME")),
        bind=_address("P2P_BIND", get("P2P_BIND") or "0.0.0.0"),
        tcp_port=_port("P2P_TCP_PORT", get("P2P_TCP_PORT"), 0),
        udp_port=_port("P2P_UDP_PORT", get("P2P_UDP_PORT"), DEFAULT_UDP_PORT, allow_zero=False),
        broadcast=_targets(get("P2P_BROADCAST")),
        announce_interval=interval,
        peer_ttl=_positive_float("P2P_PEER_TTL", get("P2P_PEER_TTL"), TTL_INTERVALS * interval),
        chunk_size=_chunk_size(get("P2P_CHUNK_SIZE")),
        upload_limit=_non_negative_int("P2P_UPLOAD_LIMIT", get("P2P_UPLOAD_LIMIT"), 0),
        network_secret=_network_key(get("P2P_NETWORK_KEY")),
        encrypt=_encrypt(get("P2P_ENCRYPT"), keyed=get("P2P_NETWORK_KEY") is not None),
        wait_timeout=_positive_float(
            "P2P_WAIT_TIMEOUT", get("P2P_WAIT_TIMEOUT"), DEFAULT_WAIT_TIMEOUT
        ),
        history_days=_history_days(get("P2P_HISTORY_DAYS")),
        config_file=config_path if config_path.is_file() else None,
        web_bind=_address("P2P_WEB_BIND", get("P2P_WEB_BIND") or DEFAULT_WEB_BIND),
        web_port=_web_port(get("P2P_WEB_PORT")),
        web_share=_flag("P2P_WEB_SHARE", get("P2P_WEB_SHARE")),
        torrent_port=_port("P2P_TORRENT_PORT", get("P2P_TORRENT_PORT"), 0),
        bittorrent=_auto_flag("P2P_BITTORRENT", get("P2P_BITTORRENT")),
        bittorrent_dht=_flag("P2P_BITTORRENT_DHT", get("P2P_BITTORRENT_DHT")),
        listener_nice=_nice("P2P_LISTENER_NICE", get("P2P_LISTENER_NICE")),
        peer_catalog_entries=_budget(
            "P2P_PEER_CATALOG_ENTRIES",
            get("P2P_PEER_CATALOG_ENTRIES"),
            DEFAULT_PEER_CATALOG_ENTRIES,
        ),
        peer_manifest_rows=_budget(
            "P2P_PEER_MANIFEST_ROWS", get("P2P_PEER_MANIFEST_ROWS"), DEFAULT_PEER_MANIFEST_ROWS
        ),
    )


def chunk_size_for(size: int, override: int | None = None) -> int:
    """Bytes per chunk for a file of `size` bytes: at most ~256 chunks, 256 KiB to 16 MiB."""
    if override:
        return override
    wanted = -(-size // TARGET_MAX_CHUNKS)  # ceiling division
    chunk = MIN_CHUNK_SIZE
    while chunk < wanted and chunk < MAX_CHUNK_SIZE:
        chunk *= 2
    return chunk


def _dir(name: str, raw: str | None, default: Path) -> Path:
    path = Path(raw).expanduser() if raw else default
    if path.exists() and not path.is_dir():
        raise SettingsError(f"{name} must be a folder, but {path} is a file")
    return path.absolute()


def _username(raw: str | None) -> str:
    if raw is None:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "user"
        raw = f"{user}@{socket.gethostname()}"
    if len(raw.encode()) > MAX_USERNAME_BYTES or not raw.isprintable():
        raise SettingsError(
            f"P2P_USERNAME must be printable and at most {MAX_USERNAME_BYTES} bytes"
        )
    return raw


def _int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None


def _port(name: str, raw: str | None, default: int, *, allow_zero: bool = True) -> int:
    if raw is None:
        return default
    port = _int(name, raw)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise SettingsError(f"{name} must be a port between {low} and 65535, not {port}")
    return port


def _web_port(raw: str | None) -> int | None:
    if raw is not None and raw.strip().lower() == "off":
        return None
    return _port("P2P_WEB_PORT", raw, DEFAULT_WEB_PORT)


def _flag(name: str, raw: str | None) -> bool:
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise SettingsError(f"{name} must be 0 or 1, not {raw!r}")


def _auto_flag(name: str, raw: str | None) -> bool | None:
    """`auto` (or unset) as None, else a flag."""
    if raw is None or raw.strip().lower() == "auto":
        return None
    return _flag(name, raw)


def _int_at_least(least: int, name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    value = _int(name, raw)
    if value < least:
        raise SettingsError(f"{name} must be {least} or more, not {value}")
    return value


def _non_negative_int(name: str, raw: str | None, default: int) -> int:
    return _int_at_least(0, name, raw, default)


def _budget(name: str, raw: str | None, default: int) -> int:
    return _int_at_least(1, name, raw, default)


def _positive_float(name: str, raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 < value < 10**7:
        raise SettingsError(f"{name} must be more than 0 seconds, not {raw}")
    return value


def _history_days(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_HISTORY_DAYS
    value = _int("P2P_HISTORY_DAYS", raw)
    if not 1 <= value <= MAX_HISTORY_DAYS:
        raise SettingsError(
            f"P2P_HISTORY_DAYS must be a whole number of days from 1 to {MAX_HISTORY_DAYS}, "
            f"not {value}"
        )
    return value


def _nice(name: str, raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LISTENER_NICE
    value = _int(name, raw)
    if not 0 <= value <= MAX_NICE:
        # Only lower: raising a priority needs privileges a role should not have.
        raise SettingsError(f"{name} must be a niceness from 0 to {MAX_NICE}, not {value}")
    return value


def _chunk_size(raw: str | None) -> int | None:
    if raw is None:
        return None
    value = _int("P2P_CHUNK_SIZE", raw)
    # The wire format's bounds: a peer refuses an offer outside them.
    if not MIN_CHUNK <= value <= MAX_CHUNK:
        raise SettingsError(
            f"P2P_CHUNK_SIZE must be between {MIN_CHUNK} and {MAX_CHUNK} bytes, not {value}"
        )
    if value % CHUNK_ALIGN:
        raise SettingsError(
            f"P2P_CHUNK_SIZE must be a multiple of {CHUNK_ALIGN} bytes, not {value}"
        )
    return value


def _network_key(raw: str | None) -> str | None:
    if raw is not None:
        try:
            check_key_strength(raw)
        except WeakNetworkKey as exc:
            raise SettingsError(str(exc)) from None
    return raw


def _encrypt(raw: str | None, *, keyed: bool) -> bool:
    value = (raw or "auto").strip().lower()
    if value == "auto":
        return keyed  # a keyed group expects to be private in both senses
    if value in ("on", "off"):
        return value == "on"
    raise SettingsError(f"P2P_ENCRYPT must be auto, on or off, not {raw!r}")


def _address(name: str, raw: str) -> str:
    try:
        return str(ipaddress.IPv4Address(raw.strip()))
    except ValueError:
        raise SettingsError(f"{name} must be an IPv4 address, not {raw!r}") from None


def _targets(raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    targets = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            infos = socket.getaddrinfo(item, None, socket.AF_INET, socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError):
            raise SettingsError(f"P2P_BROADCAST names {item!r}, which does not resolve") from None
        targets.append(str(infos[0][4][0]))
    if not targets:
        raise SettingsError("P2P_BROADCAST is set but names no address")
    return tuple(dict.fromkeys(targets))
