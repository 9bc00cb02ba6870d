"""p2pctl: look at a p2pshare node, start and stop it, and ask it to download files.

Commands are imported when they run, not to list them: `p2pctl --help` imports click
and nothing of the database, and each command imports what it uses.
"""

from __future__ import annotations

import importlib
import sys

import click

from p2pshare.cli.context import Ctl, UserError

# name -> (module, function, the one-line help `p2pctl --help` shows). The line is the
# first line of the command's docstring; tests/cli/test_lazy_cli.py keeps them equal.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "start": ("p2pshare.cli.supervise", "start", "Start the node in P2P_HOME under supervisord."),
    "stop": ("p2pshare.cli.supervise", "stop", "Stop the node in P2P_HOME."),
    "restart": ("p2pshare.cli.supervise", "restart", "Stop the node if it runs, then start it."),
    "status": (
        "p2pshare.cli.status",
        "status",
        "This node: name, address, ports, folders, which roles are alive, counts.",
    ),
    "peers": ("p2pshare.cli.listings", "peers", "Peers heard on the network."),
    "files": (
        "p2pshare.cli.listings",
        "files",
        "Files shared here and on the network; PATTERN is a substring or a glob.",
    ),
    "history": (
        "p2pshare.cli.reports",
        "history",
        "Every download: name, size, status, when, how fast, from whom.",
    ),
    "uploads": (
        "p2pshare.cli.reports",
        "uploads",
        "Chunks this node served to others, newest first; --days N: totals per peer and file.",
    ),
    "download": (
        "p2pshare.cli.download",
        "download",
        "Download NAME from every peer that has any part of it.",
    ),
    "pause": (
        "p2pshare.cli.download",
        "pause",
        "Pause unfinished downloads matching NAME (or a download id); they keep what they have.",
    ),
    "resume": (
        "p2pshare.cli.download",
        "resume",
        "Resume paused downloads matching NAME (or a download id) where they stopped.",
    ),
    "cancel": (
        "p2pshare.cli.download",
        "cancel",
        "Cancel unfinished or paused downloads matching NAME (or a download id).",
    ),
    "torrent": (
        "p2pshare.cli.torrent",
        "torrent",
        "Write a .torrent and print a magnet link for NAME, a file or folder this node holds.",
    ),
    "share-link": (
        "p2pshare.cli.share",
        "share_link",
        "Print the browser share's URL, with its token, and a QR code for a phone's camera.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when one of them runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = getattr(importlib.import_module(entry[0]), entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS, importing none of them."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, click.utils.make_default_short_help(help_line, limit))
            for name, (_, _, help_line) in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
# The version is read from the installed package's metadata only when asked for.
@click.version_option(package_name="p2pshare", prog_name="p2pctl", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Control and inspect the p2pshare node in P2P_HOME."""
    ctl = ctx.ensure_object(Ctl)
    ctx.call_on_close(ctl.close)


def main() -> None:
    try:
        cli(prog_name="p2pctl")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except UserError as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
