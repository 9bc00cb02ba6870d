"""p2p-web's routes over a real socket (httpx), against a node's server and web program.

The Host check, the token, CSRF, Range requests, names that try to leave the folders,
one-sentence errors, and P2P_WEB_PORT=off.
"""

from __future__ import annotations

import os
import stat

import httpx
import pytest

pytestmark = pytest.mark.integration

TIMEOUT = 90.0


@pytest.fixture
def web(make_node, wait_until, tmp_path):
    node = make_node("web", P2P_WEB_SHARE="1")
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the share\n")
    (node.share / "sub").mkdir()
    (node.share / "sub" / "note é.txt").write_bytes(b"0123456789" * 1000)
    (node.share / "escape.txt").symlink_to(outside)
    node.start(("server", "web"))
    port = wait_until(
        lambda: node.scalar("SELECT value FROM role_settings WHERE role='web' AND name='port'"),
        TIMEOUT,
        what="the web port",
    )
    wait_until(
        lambda: node.scalar("SELECT count(*) FROM local_files WHERE name = 'sub/note é.txt'"),
        TIMEOUT,
        what="the share to be indexed",
    )
    token = (node.home / "web-token").read_text().strip()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield node, client, token


def sentence(response: httpx.Response) -> str:
    body = response.text
    assert "Traceback" not in body and 'File "' not in body
    return body


def test_host_header_is_checked(web):
    _, client, _ = web
    assert client.get("/").status_code == 200
    assert client.get("/", headers={"Host": "localhost:1"}).status_code == 200
    for host in ("evil.example", "evil.example:47480", "127.0.0.1.nip.io", "10.0.0.1"):
        r = client.get("/", headers={"Host": host})
        assert r.status_code == 403, host
        assert "not one p2p-web answers to" in sentence(r)


def test_state_changes_need_post_and_the_csrf_token(web):
    node, client, token = web
    assert client.get("/cancel").status_code == 405
    r = client.post("/cancel", data={"id": "1"})
    assert r.status_code == 403 and "reload it" in sentence(r)
    page = client.get("/").text
    csrf = page.split('data-csrf="', 1)[1].split('"', 1)[0]
    r = client.post(
        "/cancel", data={"id": "1", "csrf": csrf}, headers={"Origin": "http://evil.example"}
    )
    assert r.status_code == 403 and "another site" in sentence(r)
    r = client.post(
        "/cancel", data={"id": "1", "csrf": csrf}, headers={"Accept": "application/json"}
    )
    assert r.status_code == 409
    assert r.json() == {"ok": False, "message": "No unfinished download has number 1."}
    r = client.post(
        "/download",
        data={"name": "nothing-like-it", "csrf": csrf},
        headers={"Accept": "application/json"},
    )
    assert r.status_code == 409 and not r.json()["ok"]
    assert node.scalar("SELECT count(*) FROM requests") == 0
    # Without the script, a form post comes back to the page with its sentence.
    r = client.post("/pause", data={"id": "x", "csrf": csrf})
    assert r.status_code == 303
    assert "That is not a download number." in client.get(r.headers["location"]).text


def test_share_needs_the_token_and_serves_ranges(web):
    _, client, token = web
    r = client.get("/share/")
    assert r.status_code == 403 and "web token" in sentence(r)
    r = client.get("/share/", params={"token": "x" * 32})
    assert r.status_code == 403
    r = client.get("/share/shared/sub/", params={"token": token})
    assert r.status_code == 200 and "note é.txt" in r.text
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=strict" in r.headers["set-cookie"]
    url = "/share/shared/sub/note%20%C3%A9.txt"  # the cookie carries the token from here on
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == b"0123456789" * 1000
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-disposition"] == (
        "attachment; filename=\"note _.txt\"; filename*=UTF-8''note%20%C3%A9.txt"
    )
    r = client.get(url, headers={"Range": "bytes=5000-"})
    assert r.status_code == 206 and r.content == whole.content[5000:]
    assert r.headers["content-range"] == "bytes 5000-9999/10000"
    r = client.get(url, headers={"Range": "bytes=-3"})
    assert r.status_code == 206 and r.content == b"789"
    r = client.get(url, headers={"Range": "bytes=10000-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */10000"
    r = client.get(url, headers={"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.content) == 10000
    r = client.head(url)
    assert r.status_code == 200 and r.headers["content-length"] == "10000" and r.content == b""


def test_share_never_leaves_its_folders(web):
    node, client, token = web
    assert client.get("/share/", params={"token": token}).status_code == 200  # the cookie
    for path in (
        "/share/shared/escape.txt",  # a symlink to a file outside
        "/share/shared/%2e%2e/p2p.db",
        "/share/shared/..%2fweb-token",
        "/share/shared/%2Fetc%2Fpasswd",
        "/share/elsewhere/x",
        "/share/shared/sub/nothing.txt",
    ):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "outside the share" not in r.text and token not in r.text
        sentence(r)
    r = client.get("/share/shared/")
    assert "escape.txt" not in r.text or "outside the share" not in r.text


def test_token_file_is_private(web):
    node, _, token = web
    mode = stat.S_IMODE(os.stat(node.home / "web-token").st_mode)
    assert mode == 0o600 and len(token) >= 32


def test_web_port_off_idles_and_stops_cleanly(make_node, wait_until):
    node = make_node("off", P2P_WEB_PORT="off")
    node.start(("web",))
    assert node.scalar("SELECT value FROM role_settings WHERE role='web' AND name='port'") == "off"
    done = node.p2pctl("share-link")
    assert done.returncode == 1 and done.stderr.startswith("error: the web program is off")
    node.stop(("web",))


def test_taken_port_is_one_sentence(make_node, free_tcp_port):
    import socket
    import subprocess
    import sys

    node = make_node("busy")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        node.env["P2P_WEB_PORT"] = str(holder.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "p2pshare.services.web"],
            env=node.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "P2P_WEB_PORT" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
