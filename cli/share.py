"""p2pctl share-link: the browser share's URL with the node's web token, and a QR code."""

from __future__ import annotations

import io
import time

import click

from p2pshare.cli.context import Ctl, UserError, pass_ctl
from p2pshare.db import node as dbnode
from p2pshare.db.roles import START_ERROR
from p2pshare.services.net import netif
from p2pshare.services.web import token as webtoken

ANY_ADDRESS = "0.0.0.0"


@click.command("share-link")
@click.option(
    "--host",
    help="Address to put in the link (default: the web program's bind address; when it "
    "listens on every address, this machine's first interface address).",
)
@click.option("--no-qr", is_flag=True, help="Print the URL only, without the QR code.")
@pass_ctl
def share_link(ctl: Ctl, host: str | None, no_qr: bool) -> None:
    """Print the browser share's URL, with its token, and a QR code for a phone's camera.

    Anyone with the link can read this node's shared and downloaded files; remove
    $P2P_HOME/web-token and run p2pctl restart to revoke every link.
    """
    with ctl.database.read() as s:
        recorded = dbnode.role_settings(s).get("web", {})
        beats = {r.role: r for r in dbnode.role_statuses(s, now=time.time(), roles=("web",))}
    if START_ERROR in recorded and not beats["web"].alive:
        raise UserError(
            f"the web program cannot start: {recorded[START_ERROR]}; "
            "fix that and run p2pctl restart"
        )
    if not recorded:
        raise UserError("the web program has not run on this node yet; start it with p2pctl start")
    if recorded.get("port") == "off":
        raise UserError(
            "the web program is off (P2P_WEB_PORT=off); give it a port with "
            "P2P_WEB_PORT=47480 p2pctl restart"
        )
    if recorded.get("share") != "yes":
        raise UserError("the browser share is off; turn it on with P2P_WEB_SHARE=1 p2pctl restart")
    try:
        token = webtoken.ensure_token(ctl.settings.home)
    except webtoken.TokenError as exc:
        raise UserError(str(exc)) from None
    url = f"http://{host or link_host(recorded['bind'])}:{recorded['port']}/share/?token={token}"
    click.echo(url)
    if not beats["web"].alive:
        click.echo("note: p2p-web is not running right now; the link works once it runs", err=True)
    if not no_qr:
        out = io.StringIO()
        qrcode(url, out)
        click.echo(out.getvalue(), nl=False)


def link_host(bind: str) -> str:
    if bind != ANY_ADDRESS:
        return bind
    addresses = netif.interface_addresses()
    return addresses[0] if addresses else "127.0.0.1"


def qrcode(url: str, out: io.StringIO) -> None:
    import segno  # only when a QR code is wanted

    segno.make(url, error="m").terminal(out=out, compact=True)
