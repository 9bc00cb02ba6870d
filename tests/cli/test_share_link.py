"""p2pctl share-link on a seeded database: the URL with the token, a QR code, and one
sentence when the web program or its share is off."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from p2pshare.db.engine import Database
from p2pshare.db.node import record_role_settings


def p2pctl(home, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    env.update(P2P_HOME=str(home), P2P_BROADCAST="127.255.255.255")
    return subprocess.run(
        [sys.executable, "-m", "p2pshare.cli.main", *args],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )


def seed(home, web: dict[str, str] | None) -> None:
    database = Database.open(home / "p2p.db")
    if web is not None:
        with database.write() as s:
            record_role_settings(s, "web", web, now=time.time())
    database.close()


def test_share_link_prints_url_with_token_and_qr(tmp_path):
    seed(tmp_path, {"bind": "127.0.0.1", "port": "40123", "share": "yes"})
    done = p2pctl(tmp_path, "share-link")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    token = (tmp_path / "web-token").read_text().strip()
    assert lines[0] == f"http://127.0.0.1:40123/share/?token={token}"
    assert len(lines) > 10 and any("█" in line or "▀" in line for line in lines[1:])
    assert "not running" in done.stderr  # no heartbeat: said as a note, the link still printed
    again = p2pctl(tmp_path, "share-link", "--no-qr", "--host", "127.0.0.2")
    assert again.stdout == f"http://127.0.0.2:40123/share/?token={token}\n"


def test_share_link_says_why_not_in_one_sentence(tmp_path):
    seed(tmp_path, None)
    for web, words in [
        (None, "has not run"),
        ({"bind": "127.0.0.1", "port": "off", "share": "no"}, "is off (P2P_WEB_PORT=off)"),
        ({"bind": "127.0.0.1", "port": "1", "share": "no"}, "P2P_WEB_SHARE=1"),
    ]:
        if web is not None:
            seed(tmp_path, web)
        done = p2pctl(tmp_path, "share-link")
        assert done.returncode == 1
        assert re.fullmatch(r"error: [^\n]+\n", done.stderr) and words in done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
        # What to do next works from any folder: no supervisord.conf path to get right.
        assert "supervisor" not in done.stderr and "p2pctl " in done.stderr
