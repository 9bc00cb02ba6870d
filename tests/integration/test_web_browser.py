"""p2p-web in a real browser: headless Debian chromium (Playwright, never its own browser)
against two real nodes under supervisord, all on loopback.

P2P_WEB_SCREENSHOTS=DIR saves the dashboard and the share page there (the README's).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root on CI
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE = "<script>alert(1)</script>.txt"
TIMEOUT = 90.0

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True
    )


def web_url(node, wait_until) -> str:
    port = wait_until(
        lambda: node.scalar("SELECT value FROM role_settings WHERE role='web' AND name='port'"),
        TIMEOUT,
        what=f"{node} web port",
    )
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def browsers():
    """Factory of headless chromium contexts, each with a fresh profile folder."""
    opened, profiles = [], []
    with sync_api.sync_playwright() as pw:

        def launch():
            profile = tempfile.mkdtemp(prefix="p2p-chromium-")
            profiles.append(profile)
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                accept_downloads=True,
                viewport={"width": 1100, "height": 900},
            )
            opened.append(context)
            return context

        yield launch
        for context in opened:
            context.close()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_downloads_a_peer_file_and_share_link_resumes(make_node, wait_until, browsers):
    alice = make_node("alice", P2P_WEB_SHARE="1")
    bob = make_node("bob")
    data = os.urandom(3 * 1024 * 1024 + 12345)  # several chunks, an odd tail
    (bob.share / "demo.bin").write_bytes(data)
    hostile_path = bob.share / HOSTILE  # its "/" makes a folder: the name peers see is HOSTILE
    hostile_path.parent.mkdir()
    hostile_path.write_bytes(b"not a script\n")
    alice.start_supervised()
    bob.start_supervised()
    base = web_url(alice, wait_until)

    dashboard = browsers()
    page = dashboard.pages[0] if dashboard.pages else dashboard.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(base + "/")
    assert page.locator("#node-name").inner_text() == alice.username

    # The page lists the peer's files by itself (it polls), the hostile name as text.
    row = page.locator('tr.file[data-name="demo.bin"]')
    row.wait_for(timeout=TIMEOUT * 1000)
    hostile = page.locator("tr.file").filter(has_text=HOSTILE)
    hostile.wait_for(timeout=TIMEOUT * 1000)
    assert "<script>alert" not in page.locator("#live-files").inner_html()
    assert "&lt;script&gt;" in page.locator("#live-files").inner_html()

    # A click downloads it; the progress bar reaches 100 %.
    row.get_by_role("button", name="Download demo.bin").click()
    page.locator("#note").filter(has_text="demo.bin").wait_for(timeout=TIMEOUT * 1000)
    done = page.locator('li.download[data-status="done"]').filter(has_text="demo.bin")
    done.wait_for(timeout=TIMEOUT * 1000)
    assert done.locator("progress").get_attribute("value") == "100"
    assert "100 %" in done.inner_text()
    saved = alice.home / "downloads" / "demo.bin"
    assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(data).digest()

    # The chart has points, and the download shows as a rate above zero.
    chart = page.locator("#rate-chart")
    wait_until(
        lambda: float(chart.get_attribute("data-download-peak") or 0) > 0,
        TIMEOUT,
        what="the chart to show the download",
    )
    points = chart.locator("polyline[data-series=download]").get_attribute("points") or ""
    assert len(points.split()) == int(chart.get_attribute("data-buckets") or 0) > 10
    assert not dialogs, f"a name from the network ran as script: {dialogs}"
    if shots := os.environ.get("P2P_WEB_SCREENSHOTS"):
        page.screenshot(path=str(Path(shots) / "dashboard.png"), full_page=True)

    # A second browser with only the share link fetches the downloaded file.
    link = alice.p2pctl("share-link", "--no-qr")
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/share/\?token=[\w-]+", url), url
    phone = browsers()
    share = phone.pages[0] if phone.pages else phone.new_page()
    share.goto(base + "/share/downloads/")  # without the token: refused with a sentence
    assert "needs the node's web token" in share.locator("p.error").inner_text()
    share.goto(url)
    share.get_by_role("link", name="downloads/").click()

    def listed() -> bool:
        share.reload()
        return share.get_by_role("link", name="demo.bin").count() == 1

    wait_until(listed, TIMEOUT, interval=0.5, what="demo.bin in the share's downloads folder")
    if shots := os.environ.get("P2P_WEB_SCREENSHOTS"):
        share.screenshot(path=str(Path(shots) / "share.png"), full_page=True)
    with share.expect_download() as info:
        share.get_by_role("link", name="demo.bin").click()
    download = info.value
    assert download.suggested_filename == "demo.bin"
    fetched = Path(download.path()).read_bytes()
    assert fetched == data

    # Resumed halfway: the first half, then the rest by a Range request (206).
    file_url = base + "/share/downloads/demo.bin"
    half = len(data) // 2
    first = share.request.get(file_url, headers={"Range": f"bytes=0-{half - 1}"})
    assert first.status == 206 and first.body() == data[:half]
    rest = share.request.get(file_url, headers={"Range": f"bytes={half}-"})
    assert rest.status == 206
    assert rest.headers["content-range"] == f"bytes {half}-{len(data) - 1}/{len(data)}"
    assert first.body() + rest.body() == data
