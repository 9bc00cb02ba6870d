"""Case 3: a chaos soak. Three nodes share random files and download each other's
while their downloaders and servers are SIGKILLed at random and restarted.

The schedule (file sizes and contents, which node fetches what, what is killed
when) comes from one seeded random.Random; the seed is printed, and
P2P_CHAOS_SEED=<seed> replays the same files and choices (which transfer is
under way at a kill still depends on timing). The chaos lasts until its quota is
met (MIN_KILLS SIGKILLs, MIN_KILLS_MID_TRANSFER of them cutting a transfer,
MIN_QUEUED downloads), and at least P2P_CHAOS_SECONDS; a busy machine only makes it
last longer. A quota not met within QUOTA_DEADLINE fails the test, saying so.

At the end, once everything has settled, the invariants a user relies on:
- every file in every download folder is whole, with exactly the SHA-256 it was
  announced with (the original's, and the one the node's own `files` table gives);
- the download folders hold nothing else: no partial or hidden file;
- every download is done, or failed with a reason; none is left queued or running;
- temp/ holds nothing of a finished download;
- every database passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from node import Node, wait_until
from nodetools import (
    ENDED,
    downloads,
    forbidden_log_text,
    integrity,
    rss_kib,
    seed,
    sha256_bytes,
    sha256_file,
    tree,
    wait_known,
)

pytestmark = pytest.mark.reliability

# The chaos goes on until its quota is met: this many SIGKILLs, as many of them cutting
# a transfer, and this many downloads queued. How long that takes depends on the
# machine; on a busy one it simply takes longer.
MIN_KILLS = 5
MIN_KILLS_MID_TRANSFER = 5
MIN_QUEUED = 10
# ...and at least this long. The full soak is 3 minutes; here it is bounded so the
# reliability suite stays well under 5 minutes on a 2-core machine. Raise it
# (P2P_CHAOS_SECONDS=180) for a longer soak by hand.
SOAK_SECONDS = float(os.environ.get("P2P_CHAOS_SECONDS", "40"))
# A bound for a machine so slow (or a node so broken) that the quota is not met:
# the test then fails saying so, never passes with less.
QUOTA_DEADLINE = SOAK_SECONDS + 240.0
SETTLE_TIMEOUT = 120.0
CHUNK = 64 * 1024
# Fast enough that many downloads finish, slow enough that kills land mid-transfer.
UPLOAD_LIMIT = 1_000_000
FILES_PER_NODE = 6
MAX_SIZE = 3 * 1024 * 1024
KILLABLE = ("downloader", "server")
# p2pctl download needs a downloader heartbeat under 10 s old; queue only below this.
DOWNLOADER_FRESH = 6.0
# Share of kills aimed at a role in the middle of a transfer (the rest hit any role).
HOT_KILL_SHARE = 0.75
# Roles never killed here: their memory at the start and the end of the soak.
WATCHED = ("listener", "announcer")
MAX_RSS_GROWTH_KIB = 64 * 1024


@dataclass
class Soak:
    rng: random.Random
    nodes: dict[str, Node]
    originals: dict[str, tuple[str, str]]  # name -> (owner label, sha256)
    requested: dict[str, set[str]] = field(default_factory=dict)
    restarts: list[tuple[float, str, str]] = field(default_factory=list)  # (due, label, role)
    kills: int = 0
    # Kills of a role in the middle of a transfer (see in_flight).
    kills_mid_transfer: int = 0
    queued: int = 0

    def file_sizes(self, first: bool) -> list[int]:
        rng = self.rng
        return [
            0 if first else rng.randint(1, 100),  # one empty file: all empty files are one content
            rng.randint(1, CHUNK - 1),
            CHUNK,
            rng.randint(CHUNK + 1, 1024 * 1024),
            rng.randint(1024 * 1024, MAX_SIZE),
            rng.randint(CHUNK + 1, MAX_SIZE),
        ][:FILES_PER_NODE]

    def wanted(self, label: str) -> list[str]:
        """What `label` may still ask for: content it neither has nor has asked for
        already (p2pctl would say so)."""
        held = {sha for name, (owner, sha) in self.originals.items() if owner == label}
        held |= {self.originals[name][1] for name in self.requested[label]}
        return sorted(name for name, (_, sha) in self.originals.items() if sha not in held)

    def downloader_up(self, label: str) -> bool:
        """The node's downloader runs and beats, so p2pctl takes a download: not killed
        and waiting for its restart, nor restarted and still starting (on a busy machine
        that may take longer than p2pctl waits for a heartbeat)."""
        if any(lbl == label and role == "downloader" for _, lbl, role in self.restarts):
            return False
        node = self.nodes[label]
        pid, beat = node.heartbeats().get("downloader", (None, 0.0))
        return pid == node.procs["downloader"].pid and beat > time.time() - DOWNLOADER_FRESH

    def queue_one(self) -> None:
        label = self.rng.choice(sorted(self.nodes))
        wanted = self.wanted(label)
        if not wanted or not self.downloader_up(label):
            return
        name = self.rng.choice(wanted)
        node = self.nodes[label]
        done = node.p2pctl("download", f"{name}@{self.originals[name][1][:16]}", "--no-wait")
        assert done.returncode == 0, f"{label}: p2pctl download {name}: {done.stderr}"
        assert "Traceback" not in done.stdout + done.stderr
        self.requested[label].add(name)
        self.queued += 1

    def quota_met(self) -> bool:
        return (
            self.kills >= MIN_KILLS
            and self.kills_mid_transfer >= MIN_KILLS_MID_TRANSFER
            and self.queued >= MIN_QUEUED
        )

    def progress(self) -> str:
        return (
            f"{self.kills} of {MIN_KILLS} SIGKILLs, {self.kills_mid_transfer} of "
            f"{MIN_KILLS_MID_TRANSFER} mid-transfer, {self.queued} of {MIN_QUEUED} downloads queued"
        )

    def nothing_left(self) -> bool:
        """Every download that could be asked for was, and none is under way: no kill
        can cut a transfer any more."""
        return not any(self.wanted(label) for label in self.nodes) and not self.in_flight()

    def in_flight(self) -> set[tuple[str, str]]:
        """(label, role) whose SIGKILL cuts a transfer now: the downloader of a node with
        an unfinished download, the server of the owner of a file being downloaded."""
        hot: set[tuple[str, str]] = set()
        for label, node in self.nodes.items():
            for (name,) in node.sql(
                "SELECT name FROM downloads WHERE status IN ('queued', 'active', 'waiting')"
            ):
                hot |= {(label, "downloader"), (self.originals[name][0], "server")}
        return hot

    def kill_one(self, now: float) -> None:
        pending = {(lbl, role) for _, lbl, role in self.restarts}
        choices = [
            (lbl, role)
            for lbl in sorted(self.nodes)
            for role in KILLABLE
            if (lbl, role) not in pending
        ]
        if not choices:
            return  # every killable role is down already, waiting for its restart
        hot = self.in_flight()
        # Mostly kill where a transfer is under way (or wait for one); sometimes anywhere.
        preferred = sorted(hot - pending)
        if self.rng.random() < HOT_KILL_SHARE:
            if not preferred:
                return
            choices = preferred
        label, role = self.rng.choice(choices)
        if (label, role) in hot:
            self.kills_mid_transfer += 1
        proc = self.nodes[label].procs[role]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.kills += 1
        self.restarts.append((now + self.rng.uniform(0.0, 2.0), label, role))

    def restart_due(self, now: float, *, all_of_them: bool = False) -> None:
        for item in list(self.restarts):
            due, label, role = item
            if all_of_them or due <= now:
                self.nodes[label].start((role,), wait=False)
                self.restarts.remove(item)


def test_chaos_soak(make_node: Callable[..., Node]) -> None:
    seed_value = int(os.environ.get("P2P_CHAOS_SEED", random.SystemRandom().randrange(2**32)))
    print(f"chaos seed {seed_value} (replay with P2P_CHAOS_SEED={seed_value})")
    rng = random.Random(seed_value)
    nodes = {
        label: make_node(
            label,
            P2P_CHUNK_SIZE=CHUNK,
            P2P_UPLOAD_LIMIT=UPLOAD_LIMIT,
            # A server down for a few seconds must not fail a download.
            P2P_WAIT_TIMEOUT=60,
        )
        for label in ("a", "b", "c")
    }
    soak = Soak(rng, nodes, {}, {label: set() for label in nodes})
    for node in nodes.values():
        node.start(wait=False)
    for node in nodes.values():
        node.wait_alive()
    for label, node in nodes.items():
        for i, size in enumerate(soak.file_sizes(label == "a")):
            name = f"{label}/f{i}-{size}.bin" if i % 2 else f"{label}-f{i}-{size}.bin"
            data = rng.randbytes(size)
            seed(node, name, data)
            soak.originals[name] = (label, sha256_bytes(data))
    for name, (owner, sha) in soak.originals.items():
        for label, node in nodes.items():
            if label != owner:
                wait_known(node, name, sha256=sha, timeout=30)
    rss_before = {
        (label, role): rss_kib(node.procs[role].pid)
        for label, node in nodes.items()
        for role in WATCHED
    }

    # ------------------------------------------------------------ chaos
    started = time.monotonic()
    while True:
        now = time.monotonic()
        soak.restart_due(now)
        if soak.quota_met() and now - started >= SOAK_SECONDS:
            break
        if now - started > QUOTA_DEADLINE:
            pytest.fail(
                f"the chaos soak did not meet its quota in {QUOTA_DEADLINE:g} s: "
                f"{soak.progress()} (seed {seed_value})"
            )
        if soak.nothing_left():
            pytest.fail(
                f"the chaos soak ran out of downloads before meeting its quota: "
                f"{soak.progress()} (seed {seed_value})"
            )
        if rng.random() < 0.6:
            soak.queue_one()
        else:
            soak.kill_one(now)
        time.sleep(rng.uniform(0.2, 0.8))  # the pace of the chaos, not a wait for anything
    soaked = time.monotonic() - started
    soak.restart_due(0.0, all_of_them=True)
    for node in nodes.values():
        node.wait_alive()

    # ------------------------------------------------------------ settle
    def all_ended() -> bool:
        return all(d["status"] in ENDED for n in nodes.values() for d in downloads(n))

    wait_until(all_ended, SETTLE_TIMEOUT, interval=0.5, what="every download to end")

    def indexed() -> bool:
        # The server has indexed every published download (it may have been
        # killed between the publication and its own scan).
        for node in nodes.values():
            on_disk = set(tree(node.home / "downloads"))
            rows = {r[0] for r in node.sql("SELECT name FROM local_files WHERE root='download'")}
            if on_disk != rows:
                return False
        return True

    wait_until(indexed, 60, interval=0.3, what="the download folders to be indexed")
    rss_after = {
        (label, role): rss_kib(node.procs[role].pid)
        for label, node in nodes.items()
        for role in WATCHED
    }

    # ------------------------------------------------------------ invariants
    done = failed = verified = 0
    lost = 0
    problems: list[str] = []
    for label, node in nodes.items():
        rows = downloads(node)
        published: set[str] = set()
        for d in rows:
            name = d["name"]
            _, announced = soak.originals[name]
            if d["status"] == "done":
                done += 1
                published.add(d["saved_as"])
                path = node.home / "downloads" / d["saved_as"]
                got = sha256_file(path) if path.is_file() else "missing"
                known = node.scalar(
                    "SELECT f.sha256 FROM local_files l JOIN files f ON f.id = l.file_id "
                    "WHERE l.root = 'download' AND l.name = ?",
                    (d["saved_as"],),
                )
                if not (got == announced == d["sha256"] == known):
                    problems.append(
                        f"{label}: {name}: on disk {got}, announced {announced}, "
                        f"download row {d['sha256']}, files table {known}"
                    )
                verified += 1
                lost += max(0, d["bytes_received"] - d["size"])
            elif d["status"] == "failed":
                failed += 1
                if not (d["reason"] or "").strip():
                    problems.append(f"{label}: {name} failed without a reason")
            else:
                problems.append(f"{label}: {name} ended {d['status']}: {d['reason']}")
        shared = {name: sha256_file(path) for name, path in tree(node.share).items()}
        mine = {name: sha for name, (owner, sha) in soak.originals.items() if owner == label}
        if shared != mine:
            problems.append(f"{label}: the share folder changed: {shared} != {mine}")
        extra = set(tree(node.home / "downloads")) - published
        if extra:
            problems.append(
                f"{label}: files in the download folder that no download published: {extra}"
            )
        leftovers = set(tree(node.home / "temp"))
        if leftovers:
            problems.append(f"{label}: temp/ still holds {leftovers}")
        check = integrity(node)
        if check != "ok":
            problems.append(f"{label}: integrity_check: {check}")
        problems += forbidden_log_text(node)
        if len(rows) != len(soak.requested[label]):
            problems.append(
                f"{label}: {len(rows)} downloads recorded, {len(soak.requested[label])} asked"
            )

    growth = {k: rss_after[k] - rss_before[k] for k in rss_before}
    print(
        f"chaos: {soaked:.0f} s, {soak.queued} downloads queued, {soak.kills} SIGKILLs "
        f"({soak.kills_mid_transfer} mid-transfer); "
        f"{done} done ({verified} files verified), {failed} failed; "
        f"bytes refetched {lost}; RSS KiB before {rss_before} after {rss_after}"
    )
    assert not problems, "\n".join(problems)
    assert soak.quota_met(), soak.progress()  # the loop above ends only when it is
    # Every downloaded file was available throughout (its owner never leaves for good),
    # so a failure here means a restart was not survived.
    assert failed == 0, [d for n in nodes.values() for d in downloads(n) if d["status"] == "failed"]
    assert all(g < MAX_RSS_GROWTH_KIB for g in growth.values()), growth
