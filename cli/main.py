"""p2pctl: look at a p2pshare node and ask it to download files."""

from __future__ import annotations

import sys

import click

from p2pshare.cli import download, reports, share
from p2pshare.cli.context import Ctl, UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# The version is read from the installed package's metadata only when asked for.
@click.version_option(package_name="p2pshare", prog_name="p2pctl", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Control and inspect the p2pshare node in P2P_HOME."""
    ctl = ctx.ensure_object(Ctl)
    ctx.call_on_close(ctl.close)


for command in (
    reports.status,
    reports.peers,
    reports.files,
    reports.history,
    reports.uploads,
    download.download,
    download.pause,
    download.resume,
    download.cancel,
    share.share_link,
):
    cli.add_command(command)


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
