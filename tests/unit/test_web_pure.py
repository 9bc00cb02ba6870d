"""p2p-web's pure parts: ranges, the Host and token rules, file names, the token file,
the share's path check, the chart and the rate sampler; and the P2P_WEB_* settings."""

from __future__ import annotations

import os
import stat
from dataclasses import replace

import pytest

from p2pshare.db.reports import LocalFileRow
from p2pshare.services.settings import SettingsError, load_settings
from p2pshare.services.web import chart, guard, share
from p2pshare.services.web import token as webtoken
from p2pshare.services.web.ranges import Span, Unsatisfiable, parse_range
from p2pshare.services.web.sampler import RateSampler


@pytest.mark.parametrize(
    ("header", "span"),
    [
        (None, None),
        ("bytes=0-99", Span(0, 99)),
        ("bytes=500-", Span(500, 999)),
        ("bytes=-100", Span(900, 999)),
        ("bytes=-5000", Span(0, 999)),
        ("bytes=990-5000", Span(990, 999)),
        ("bytes=0-0", Span(0, 0)),
        ("items=0-5", None),  # another unit: the whole file
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("bytes=5-1", None),
        ("bytes=abc", None),
        ("bytes=-", None),
        ("bytes= 1-2", Span(1, 2)),
    ],
)
def test_parse_range(header, span):
    assert parse_range(header, 1000) == span


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_range(header):
    with pytest.raises(Unsatisfiable):
        parse_range(header, 1000)


def test_span_content_range():
    assert Span(10, 19).content_range(100) == "bytes 10-19/100"
    assert Span(10, 19).length == 10


@pytest.mark.parametrize(
    ("host", "bind", "allowed"),
    [
        ("127.0.0.1:47480", "127.0.0.1", True),
        ("localhost:47480", "127.0.0.1", True),
        ("LOCALHOST", "127.0.0.1", True),
        ("[::1]:47480", "127.0.0.1", True),
        ("127.0.0.2", "127.0.0.1", True),
        ("evil.example", "127.0.0.1", False),  # DNS rebinding
        ("evil.example:47480", "127.0.0.1", False),
        ("192.168.1.5:47480", "127.0.0.1", False),
        ("192.168.1.5:47480", "0.0.0.0", True),
        ("evil.example", "0.0.0.0", False),
        ("", "127.0.0.1", False),
        ("127.0.0.1:abc", "127.0.0.1", False),
        ("user@127.0.0.1", "127.0.0.1", False),
        ("[::1", "127.0.0.1", False),
        (None, "127.0.0.1", False),
    ],
)
def test_host_allowed(host, bind, allowed):
    assert guard.host_allowed(host, bind) is allowed


def test_origin_must_match_host():
    assert guard.origin_matches(None, "127.0.0.1:1")
    assert guard.origin_matches("http://127.0.0.1:1", "127.0.0.1:1")
    assert not guard.origin_matches("http://evil.example", "127.0.0.1:1")
    assert not guard.origin_matches("null", "127.0.0.1:1")


def test_token_needed_off_loopback_and_always_for_the_share():
    assert guard.needs_token("/share/", "127.0.0.1")
    assert guard.needs_token("/share/shared/a", "127.0.0.1")
    assert not guard.needs_token("/", "127.0.0.1")
    assert guard.needs_token("/", "0.0.0.0")
    assert guard.needs_token("/api/state", "192.168.1.5")
    assert not guard.needs_token("/static/style.css", "0.0.0.0")
    assert not guard.needs_token("/sharer", "127.0.0.1")


def test_content_disposition_names():
    assert share.content_disposition("a/b/report.pdf") == (
        "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
    )
    header = share.content_disposition('dir/"quoted" é\\x.txt')
    assert header.startswith('attachment; filename="_quoted_ __x.txt"; ')
    assert header.endswith("filename*=UTF-8''%22quoted%22%20%C3%A9%5Cx.txt")


def test_token_file_is_made_once_and_private(tmp_path):
    first = webtoken.ensure_token(tmp_path)
    assert webtoken.ensure_token(tmp_path) == first
    assert stat.S_IMODE(os.stat(tmp_path / "web-token").st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["web-token"]  # no temp file left
    assert webtoken.same(first, first) and not webtoken.same(first[:-1], first)
    assert not webtoken.same(None, first)
    assert webtoken.csrf_token(first) != first


def test_damaged_token_file_is_one_sentence(tmp_path):
    (tmp_path / "web-token").write_text("short\n")
    with pytest.raises(webtoken.TokenError, match="damaged"):
        webtoken.ensure_token(tmp_path)


def _row(name: str, path) -> LocalFileRow:
    st = os.stat(path)
    return LocalFileRow(
        "share", name, st.st_size, "0" * 64, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
    )


def test_share_refuses_a_symlink_out_and_a_changed_file(tmp_path):
    home = tmp_path / "home"
    settings = load_settings({"P2P_HOME": str(home)})
    settings.make_dirs()
    inside = settings.share_dir / "ok.txt"
    inside.write_text("fine")
    fd, _ = share.open_verified(settings, _row("ok.txt", inside))
    os.close(fd)
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (settings.share_dir / "link.txt").symlink_to(outside)
    with pytest.raises(share.NotShared, match="outside"):
        share.open_verified(settings, _row("link.txt", outside))
    with pytest.raises(share.NotShared):
        share.open_verified(settings, _row("../secret.txt", outside))
    row = _row("ok.txt", inside)
    with pytest.raises(share.Changed):
        share.open_verified(settings, replace(row, size=row.size + 1))


def test_share_listing_folder_by_folder():
    files = [
        LocalFileRow("share", n, s, "0" * 64, 0, 0, 0)
        for n, s in [("a.txt", 1), ("album/cd1/01.flac", 10), ("album/02.flac", 5)]
    ]
    top = share.listing(files, "share", "")
    assert [(e.name, e.folder, e.size, e.files) for e in top] == [
        ("album", True, 15, 2),
        ("a.txt", False, 1, 1),
    ]
    assert [e.name for e in share.listing(files, "share", "album/")] == ["cd1", "02.flac"]
    assert share.listing(files, "download", "") == []
    with pytest.raises(share.NotShared):
        share.listing(files, "share", "nothing/")


def test_chart_points_and_buckets():
    rates = chart.bucket_rates([(0, 500), (2, 1000), (99, 1), (-1, 1)], 3)
    assert rates == [100.0, 0.0, 200.0]
    c = chart.make_chart(rates, [0.0, 0.0, 0.0])
    assert c.scale == 200.0
    assert c.points(c.series[0]) == "0.0,80.0 300.0,160.0 600.0,0.0"
    assert chart.make_chart([0.0], [0.0]).scale == 1.0


def test_sampler_rates():
    sampler = RateSampler()
    sampler.add({1: 0}, now=100.0)
    assert sampler.rate(1, now=100.0) is None
    sampler.add({1: 1000, 2: 50}, now=101.0)
    sampler.add({1: 3000, 2: 50}, now=102.0)
    assert sampler.rate(1, now=102.0) == pytest.approx(1500.0)
    assert [s.received for s in sampler.samples(since=0)] == [1050, 2000]
    sampler.add({2: 50}, now=103.0)  # a download gone from the rows: forgotten
    assert sampler.rate(1, now=103.0) is None


def test_web_settings():
    s = load_settings({"P2P_HOME": "/tmp/x"})
    assert (s.web_bind, s.web_port, s.web_share) == ("127.0.0.1", 47480, False)
    s = load_settings(
        {
            "P2P_HOME": "/tmp/x",
            "P2P_WEB_PORT": "off",
            "P2P_WEB_SHARE": "1",
            "P2P_WEB_BIND": "0.0.0.0",
        }
    )
    assert (s.web_bind, s.web_port, s.web_share) == ("0.0.0.0", None, True)
    assert load_settings({"P2P_HOME": "/tmp/x", "P2P_WEB_PORT": "0"}).web_port == 0
    for name, value in [
        ("P2P_WEB_PORT", "70000"),
        ("P2P_WEB_PORT", "web"),
        ("P2P_WEB_SHARE", "maybe"),
        ("P2P_WEB_BIND", "localhost"),
    ]:
        with pytest.raises(SettingsError, match=name):
            load_settings({"P2P_HOME": "/tmp/x", name: value})
