"""Tables line up by display width: a name in CJK or with an emoji takes two columns a
character on a terminal, and the columns after it still start where the header's does."""

from __future__ import annotations

import click
from click.testing import CliRunner
from wcwidth import wcswidth

from p2pshare.cli.render import emit_table

ROWS = [["日本語のファイル.txt", "1 KiB"], ["a.txt", "22 B"], ["🎵 song.flac", "3 MiB"]]


def test_columns_after_a_wide_name_line_up() -> None:
    @click.command()
    def table() -> None:
        emit_table(["name", "size"], ROWS, "nothing")

    header, _rule, *lines = CliRunner().invoke(table).output.splitlines()
    column = header.index("size")  # the header is ASCII: characters are columns
    for (_, size), line in zip(ROWS, lines, strict=True):
        # Without wcwidth, tabulate pads a wide name by its characters, and the size
        # column starts short of the header's on the CJK and emoji rows.
        assert wcswidth(line[: line.rindex(size)]) == column, line
