"""The chunk picker and the publishing step: pure code and a temp folder."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from p2pshare.services import protocol
from p2pshare.services.downloader.picker import Picker
from p2pshare.services.downloader.publish import (
    PublishError,
    copy_names,
    numbered,
    publish,
    safe_destination,
)


def bits(count: int, held: set[int]) -> bytes:
    field = protocol.bitfield_empty(count)
    for i in held:
        protocol.bitfield_set(field, i)
    return bytes(field)


def test_rarest_chunk_first_then_by_index() -> None:
    p = Picker(4)
    p.set_peer("a", None)  # holds all
    p.set_peer("b", bits(4, {0, 1, 3}))
    # chunk 2 is held by one peer only: rarest
    assert p.pick("a") == (2, False)
    assert p.pick("a") == (0, False)
    assert p.pick("b") == (1, False)


def test_a_peer_is_only_asked_for_what_it_holds() -> None:
    p = Picker(3)
    p.set_peer("b", bits(3, {1}))
    assert p.pick("b") == (1, False)
    assert p.pick("b") is None


def test_a_pick_without_duplicates_offers_no_endgame_copy() -> None:
    p = Picker(2)
    p.set_peer("a", None)
    p.set_peer("b", None)
    assert p.pick("a") == (0, False)
    assert p.pick("a") == (1, False)
    assert p.pick("b", duplicates=False) is None  # only chunks in flight are left
    assert p.pick("b") == (0, True)


def test_endgame_asks_a_second_peer_once_and_the_first_copy_wins() -> None:
    p = Picker(1)
    p.set_peer("a", None)
    p.set_peer("b", None)
    p.set_peer("c", None)
    assert p.pick("a") == (0, False)
    assert p.pick("b") == (0, True)
    assert p.pick("c") is None  # at most two owners
    assert p.complete("b", 0) is True
    assert p.complete("a", 0) is False
    assert p.finished


def test_released_chunks_are_missing_again() -> None:
    p = Picker(2)
    p.set_peer("a", None)
    p.set_peer("b", None)
    first = p.pick("a")
    assert first is not None
    assert p.drop_peer("a") == [first[0]]
    assert p.pick("b") == (first[0], False)


def test_unavailable_lists_chunks_nobody_holds() -> None:
    p = Picker(4, done=[0])
    p.set_peer("a", bits(4, {1}))
    assert p.unavailable() == [2, 3]
    p.drop_peer("a")
    assert p.unavailable() == [1, 2, 3]


def test_done_chunks_are_never_picked() -> None:
    p = Picker(3, done=[0, 1, 2])
    p.set_peer("a", None)
    assert p.finished
    assert p.pick("a") is None


def test_numbered_names() -> None:
    names = [x.name for x, _ in zip(numbered(Path("/d/report.pdf")), range(3), strict=False)]
    assert names == ["report.pdf", "report (1).pdf", "report (2).pdf"]
    names = [x.name for x, _ in zip(numbered(Path("/d/README")), range(2), strict=False)]
    assert names == ["README", "README (1)"]


@pytest.mark.parametrize("name", ["a.tar.gz", ".bashrc", "trailing.", "x", "..b", "a.b.c"])
def test_copy_names_keep_the_suffix_pathlib_sees(name: str) -> None:
    stem, suffix = Path(name).stem, Path(name).suffix
    assert list(itertools.islice(copy_names(name), 3)) == [
        name, f"{stem} (1){suffix}", f"{stem} (2){suffix}"
    ]  # fmt: skip


def test_a_file_where_a_folder_goes_is_a_clear_refusal(tmp_path: Path) -> None:
    (tmp_path / "album").write_bytes(b"not a folder")
    with pytest.raises(PublishError, match="it is a file"):
        safe_destination(tmp_path, "album/1.bin")


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a\\b", "a/./b", "a\x00b"])
def test_names_leading_outside_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(PublishError):
        safe_destination(tmp_path, name)


def test_a_symlinked_folder_leading_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "sub").symlink_to(outside)
    with pytest.raises(PublishError):
        safe_destination(downloads, "sub/file.bin")


def test_folders_checked_once_for_many_names_still_refuse_bad_names(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (downloads / "link").symlink_to(outside)
    checked: dict[str, str] = {}
    first = safe_destination(downloads, "album/a/1.bin", checked=checked)
    second = safe_destination(downloads, "album/a/2.bin", checked=checked)
    assert first == downloads.resolve() / "album" / "a" / "1.bin"
    assert second.parent == first.parent and (downloads / "album" / "a").is_dir()
    real = downloads.resolve()
    assert checked == {
        "": str(real),
        "album": str(real / "album"),
        "album/a": str(real / "album" / "a"),
    }
    # A sibling folder starts from its checked parent; a symlink inside the folder is
    # followed to where it really is.
    (downloads / "inside").symlink_to(real / "album")
    assert safe_destination(downloads, "inside/b/3.bin", checked=checked) == (
        real / "album" / "b" / "3.bin"
    )
    # Each name is still checked, and a folder not yet seen is checked in full.
    with pytest.raises(PublishError):
        safe_destination(downloads, "album/a/../../../x", checked=checked)
    with pytest.raises(PublishError):
        safe_destination(downloads, "link/file.bin", checked=checked)
    assert "link" not in checked


def test_publish_never_overwrites_and_removes_the_temp(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "a.txt").write_bytes(b"mine")
    temp = tmp_path / "a.part"
    temp.write_bytes(b"theirs")
    chosen: list[Path] = []

    final = publish(temp, safe_destination(downloads, "a.txt"), chosen.append)

    assert final.name == "a (1).txt"
    assert chosen[-1] == final
    assert (downloads / "a.txt").read_bytes() == b"mine"
    assert final.read_bytes() == b"theirs"
    assert not temp.exists()
    assert sorted(os.listdir(downloads)) == ["a (1).txt", "a.txt"]
