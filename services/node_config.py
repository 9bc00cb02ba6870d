"""The node's own record of its settings: `$P2P_HOME/p2p.toml`, written by `p2pctl start`.

A node started with settings in its shell's environment would otherwise forget them the
moment it is restarted from another shell (a keyed node would restart open, a loopback
node would announce on the LAN). So `p2pctl start` writes every setting it was
started with into the home's config file, and runs supervisord without the P2P_*
settings of its shell: the roles, the web page and every later `p2pctl` read the one
file. A person may edit it; a variable given to `p2pctl start`/`restart` replaces its
line and leaves the rest (comments included) as it was.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from p2pshare.services.settings import (
    CONFIG_NAME,
    VARIABLES,
    Settings,
    SettingsError,
    default_home,
    load_settings,
    read_config_file,
)

# Not recorded: the home is where the record lives.
UNRECORDED = ("P2P_HOME",)
RECORDED = tuple(v for v in VARIABLES if v not in UNRECORDED)
# Paths are recorded absolute: a relative one means the folder p2pctl ran in, which
# supervisord and every later command do not share.
PATH_VARIABLES = ("P2P_SHARE_DIR", "P2P_DOWNLOAD_DIR")
# Never printed: the file is private (0600) because of them.
SECRET_VARIABLES = ("P2P_NETWORK_KEY",)
FILE_MODE = 0o600
HEADER = """\
# The settings of the p2pshare node in this folder, written by `p2pctl start`.
# The node's roles, its web page and every p2pctl command read them from here, whatever
# the shell's environment says. A P2P_* variable given to `p2pctl start` or `restart`
# replaces its line; edit the rest freely and run `p2pctl restart` to apply. Names and
# meanings: the README's Settings section. Private (mode 0600): it may hold a network key.
"""


@dataclass(frozen=True)
class Change:
    """One recorded setting that a start changes."""

    variable: str
    old: str | None  # None: not recorded before
    new: str

    def words(self) -> str:
        if self.variable in SECRET_VARIABLES:
            return f"{self.variable} {'set' if self.old is None else 'changed'}"
        return f"{self.variable} {self.old if self.old is not None else '(unset)'} -> {self.new}"


@dataclass(frozen=True)
class StartPlan:
    """What `p2pctl start` runs the node with, and how it differs from the record."""

    home: Path
    settings: Settings
    record: Path
    new_values: dict[str, str]  # what the record gains or changes
    changes: list[Change]  # against the record as it was; empty on a first start
    first: bool  # no record existed
    inherited: bool = False  # a first record, from what the roles last ran with

    def save(self) -> None:
        write_record(self.record, self.new_values)


def home_of(env: Mapping[str, str]) -> Path:
    """The node's home as `load_settings` finds it, from the shell alone."""
    raw = env.get("P2P_HOME")
    return (Path(raw).expanduser() if raw else default_home(env)).absolute()


def record_path(home: Path) -> Path:
    return home / CONFIG_NAME


def without_settings(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the settings a record holds (nor P2P_CONFIG): what the node's
    programs run with, so that they read the record and nothing else."""
    drop = {*RECORDED, "P2P_CONFIG"}
    return {k: v for k, v in env.items() if k not in drop}


def shell_values(env: Mapping[str, str]) -> dict[str, str]:
    """The settings this shell sets (an empty variable is unset, as everywhere)."""
    return {name: env[name] for name in RECORDED if env.get(name)}


def plan_start(
    env: Mapping[str, str], last_run: Mapping[str, Mapping[str, str]] | None = None
) -> StartPlan:
    """The settings a start uses: the record, then `$P2P_CONFIG`, then the shell.

    Merging onto the record (rather than reading one file or the other) is what keeps a
    network key or an announcement target that a shell leaves out. A node with no record
    yet (started before there was one) takes what its roles last ran with (`last_run`,
    their `role_settings`) where the shell gives nothing, and refuses to start without
    the network key it ran with. Raises SettingsError for a value no role would accept,
    before anything is written or stopped.
    """
    home = home_of(env)
    path = record_path(home)
    recorded = read_config_file(path)
    first = not path.is_file()
    inherited = bool(first and last_run)
    if inherited:
        assert last_run is not None
        recorded = ran_with(last_run)
    explicit = env.get("P2P_CONFIG")
    given: dict[str, str] = {}
    if explicit:
        other = Path(explicit).expanduser()
        if not other.is_file():
            raise SettingsError(f"P2P_CONFIG names {other}, which is not a file")
        if other.absolute() != path:
            given.update(read_config_file(other))
    given.update(shell_values(env))
    for name in PATH_VARIABLES:
        if name in given:
            given[name] = str(Path(given[name]).expanduser().absolute())
    values = {**recorded, **given}
    keyed = inherited and last_run is not None and _ran_keyed(last_run)
    if keyed and "P2P_NETWORK_KEY" not in values:
        raise SettingsError(
            "this node last ran with a network key, which neither this shell nor its config "
            "gives; start it with P2P_NETWORK_KEY set (it is then kept in "
            f"{path}), so that it does not restart open"
        )
    settings = load_settings({**without_settings(env), **values, "P2P_HOME": str(home)})
    new_values = {name: value for name, value in given.items() if recorded.get(name) != value}
    changes = [Change(name, recorded.get(name), value) for name, value in new_values.items()]
    if first:  # the programs read the record alone: all of it goes in
        return StartPlan(home, settings, path, values, [], True, inherited)
    return StartPlan(home, settings, path, new_values, changes, False)


# role_settings name -> the variable a start gives, per role that records it.
RAN_WITH = {
    ("announcer", "username"): "P2P_USERNAME",
    ("server", "bind"): "P2P_BIND",
    ("listener", "udp_port"): "P2P_UDP_PORT",
    ("announcer", "announce_interval"): "P2P_ANNOUNCE_INTERVAL",
    ("listener", "peer_ttl"): "P2P_PEER_TTL",
    ("server", "share_dir"): "P2P_SHARE_DIR",
    ("server", "download_dir"): "P2P_DOWNLOAD_DIR",
    ("server", "upload_limit"): "P2P_UPLOAD_LIMIT",
    ("server", "history_days"): "P2P_HISTORY_DAYS",
    ("downloader", "wait_timeout"): "P2P_WAIT_TIMEOUT",
    ("web", "bind"): "P2P_WEB_BIND",
    ("web", "port"): "P2P_WEB_PORT",
}


def ran_with(last_run: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The variables that give what the roles last ran with (their `role_settings`):
    not the TCP port (the real one of P2P_TCP_PORT=0 may be another's now), not the
    key (never recorded), interface broadcast addresses left to be found again."""
    out = {
        variable: last_run[role][name]
        for (role, name), variable in RAN_WITH.items()
        if name in last_run.get(role, {})
    }
    announcer = last_run.get("announcer", {})
    if announcer.get("broadcast_from") == "P2P_BROADCAST" and announcer.get("broadcast"):
        out["P2P_BROADCAST"] = announcer["broadcast"]
    if last_run.get("web", {}).get("share") == "yes":
        out["P2P_WEB_SHARE"] = "1"
    if announcer.get("encrypt") == "yes" and announcer.get("network_key") == "no":
        out["P2P_ENCRYPT"] = "on"
    if last_run.get("server", {}).get("chunk_size", "auto") != "auto":
        out["P2P_CHUNK_SIZE"] = last_run["server"]["chunk_size"]
    return out


def _ran_keyed(last_run: Mapping[str, Mapping[str, str]]) -> bool:
    return "yes" in (last_run.get(r, {}).get("network_key") for r in ("announcer", "listener"))


def write_record(path: Path, values: Mapping[str, str]) -> None:
    """Set `values` in the record at `path`, keeping its other lines; private, atomic."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = HEADER
    updated = _set_lines(text, values)
    try:
        ok = _parsed(updated) == {**_parsed(text), **values}
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:  # a value spread over several lines: write the whole file anew
        merged = {**_parsed_or_empty(text), **values}
        updated = _set_lines(HEADER, merged)
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an older temp file may have had another mode
        os.write(fd, updated.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def node_settings(env: Mapping[str, str]) -> tuple[Settings, list[str]]:
    """The settings of the node whose home this shell names, and the variables this
    shell sets differently: from the record when there is one (the node was started
    by `p2pctl start`), else this shell's own. Raises SettingsError."""
    home = home_of(env)
    if not record_path(home).is_file():
        return load_settings(env), []
    node = load_settings({**without_settings(env), "P2P_HOME": str(home)})
    try:
        shell = load_settings(env)
    except SettingsError:  # a bad value here differs from the node's good one
        return node, list(shell_values(env))
    return node, differing(shell, node, env)


def differing(shell: Settings, node: Settings, env: Mapping[str, str]) -> list[str]:
    """The variables this shell sets to something other than what the node runs with."""
    return [
        name
        for name in shell_values(env)
        if getattr(shell, _field(name), None) != getattr(node, _field(name), None)
    ]


def _field(variable: str) -> str:
    return variable.removeprefix("P2P_").lower()


def _line(name: str, value: str) -> str:
    # A JSON string is a TOML basic string: the same escapes for quotes, backslashes
    # and control characters.
    return f"{name} = {json.dumps(value, ensure_ascii=False)}"


def _set_lines(text: str, values: Mapping[str, str]) -> str:
    lines = text.splitlines()
    for name, value in values.items():
        pattern = re.compile(rf'^\s*("?){re.escape(name)}\1\s*=')
        at = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
        if at is None:
            lines.append(_line(name, value))
        else:
            lines[at] = _line(name, value)
    return "\n".join(lines) + "\n"


def _parsed(text: str) -> dict[str, str]:
    return {k: _text(v) for k, v in tomllib.loads(text).items()}


def _parsed_or_empty(text: str) -> dict[str, str]:
    try:
        return _parsed(text)
    except tomllib.TOMLDecodeError:
        return {}


def _text(value: object) -> str:
    # As read_config_file reads it.
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
