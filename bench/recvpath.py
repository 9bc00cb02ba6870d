"""Receive-path comparison for issue 10, item 4: recv_into+pwrite vs mmap vs splice.

    python bench/recvpath.py [--dir /dev/shm --dir /var/tmp] [--size-mib 1024]
                             [--chunk-mib 4 --chunk-mib 1] [--reps 3]

A sender process os.sendfile()s a /dev/shm file chunk by chunk over one loopback
TCP connection; a receiver process writes it into a temp file (ftruncate to size)
in each --dir, verifying each chunk's chained SHA-256 state as it goes, then
fdatasyncs. Each receiver also runs without hashing, to split copy from hash cost:
  (a) pwrite        recv_into a reused chunk-sized bytearray, hash it, pwrite it
      pwrite/256k   the same, the verified chunk written as 256 KiB pwrites
  (b) mmap          recv_into straight into a MAP_SHARED mmap of the file, hash from
                    it, msync at the end (+populate: MADV_POPULATE_WRITE per chunk)
  (c) splice+pread  os.splice socket -> pipe -> file, pread the chunk back to hash it
      splice+mmap   the same, hashing from an mmap of the file
MB/s: first byte to last chunk verified (sync excluded). CPU s/GiB: getrusage of
each child. Medians of --reps, methods interleaved; spread = (max-min)/median.
One receiving thread (the node overlaps receive and hash): read CPU before MB/s.

Endgame duplicates: (a) is correct as is: each copy lands in its own buffer and
only verified bytes reach the file, so a late duplicate rewrites identical bytes.
(b) and (c) put unverified bytes in the file, where a second peer (or the slow
first one, still in recv_into/splice) can overwrite a chunk that already verified.
They need one in-place owner per chunk, other copies received into a held-back
buffer (path (a)), and the owner's socket cancelled before a held-back winner
writes: little CPU (a few chunks per download) but a second receive path. (b)
also dies of SIGBUS, not OSError, if the disk fills; (c) cannot work under TLS.

Findings (2-core Firecracker VM, SHA-NI, load average 9-16 from other work; 6 runs
per row from 2 invocations; CPU spread mostly 5-30%, MB/s 20-100%):
- tmpfs, with hashing: pwrite 1.67-1.79 s/GiB, pwrite/256k the same, splice+mmap
  1.07-1.09x, splice+pread 1.13-1.15x, mmap 1.27-1.32x (a fault per 4 KiB page,
  populate or not). Without: pwrite and splice tie at 0.85-1.0 s/GiB; the copy
  splice saves is paid back by any read-back; hashing costs 0.7-0.9 s/GiB.
- ext4 (/var/tmp), with hashing: pwrite/256k 1.55, splice+mmap 1.65-1.68,
  splice+pread 1.71-1.83, pwrite 2.55-2.80, mmap 2.84-2.99 s/GiB; without:
  pwrite/256k 0.80, splice 0.77-0.81, pwrite 1.89-2.08. Whole-chunk pwrites pay
  in copy_folio_from_iter_atomic (perf). Standalone, 1 GiB of 1-4 MiB pwrites
  costs 1.4-1.9 s sys after other activity, 0.3-0.6 s back to back, 0.33-0.39 s
  in 64-964 KiB pieces: consistent with large folios being carved from free
  blocks that the balloon reported to the host (page_reporting_order 9), whose
  first touch then faults on the host. A VM artefact, but this VM's benchmarks
  see it, and it makes ext4 rows depend on the run before (mmap vs populate).
- Keep (a), written in 256 KiB pieces: cheapest or tied everywhere (within noise
  of splice on ext4, of plain pwrite on tmpfs), correct for duplicates and TLS,
  one receive path. Sender: 0.15-0.3 s/GiB in every row.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import mmap
import multiprocessing as mp
import os
import queue
import resource
import socket
import statistics
import threading
import time
from pathlib import Path

from tabulate import tabulate

try:
    from p2pshare.services.hashing.chain import INITIAL_STATE, ChainHasher
except ImportError:  # tree mid-edit: per-chunk hashlib costs the same; the copy path is the point
    ChainHasher = None

MIB, GIB = 1 << 20, 1 << 30
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; 3.11 lacks the name
PIECE = 256 * 1024  # pwrite/256k: ext4 then allocates small folios (see Findings)
METHODS = [(m, True) for m in ("pwrite", "pwrite/256k", "mmap", "mmap+populate")]
METHODS += [(m, True) for m in ("splice+pread", "splice+mmap", "writer-thread", "hash-threads")]
METHODS += [(m, False) for m in ("pwrite", "pwrite/256k", "mmap", "mmap+populate", "splice")]


def chunk_digest(i: int, data, chunk: int, expected: list[bytes]) -> bytes:
    if ChainHasher is None:
        return hashlib.sha256(data).digest()
    before = expected[i - 1] if i else INITIAL_STATE
    return ChainHasher(before, i * chunk).update(data).state()


def expected_states(src: Path, size: int, chunk: int) -> list[bytes]:
    out: list[bytes] = []
    buf = memoryview(bytearray(chunk))
    with open(src, "rb") as fh:
        for i in range(size // chunk):
            fh.readinto(buf)
            out.append(chunk_digest(i, buf, chunk, out))
    return out


def cpu(r0, r1) -> float:
    return r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def send(listener: socket.socket, src: Path, size: int, chunk: int, out) -> None:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    conn, _ = listener.accept()
    fd = os.open(src, os.O_RDONLY)
    for off in range(0, size, chunk):
        sent = 0
        while sent < chunk:
            sent += os.sendfile(conn.fileno(), fd, off + sent, chunk - sent)
    conn.close()
    out.send({"cpu": cpu(r0, resource.getrusage(resource.RUSAGE_SELF))})


def fill(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError("sender closed early")
        got += n


def splice_chunk(sfd: int, pr: int, pw: int, fd: int, off: int, n: int, pipesz: int) -> None:
    while n:
        got = os.splice(sfd, pw, min(n, pipesz))
        if not got:
            raise EOFError("sender closed early")
        put = 0
        while put < got:
            put += os.splice(pr, fd, got - put, offset_dst=off + put)
        off, n = off + got, n - got


def receive_handing_over(sock, fd, size, chunk, expected) -> int:
    """writer-thread: this thread receives and hashes 256 KiB blocks, a second thread
    writes them (the node's design, services/downloader/writer.py). Returns bad chunks."""
    free: queue.SimpleQueue = queue.SimpleQueue()
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(4):
        free.put(bytearray(PIECE))

    def write() -> None:
        while (item := todo.get()) is not None:
            buf, n, off = item
            os.pwrite(fd, memoryview(buf)[:n], off)
            free.put(buf)

    writer = threading.Thread(target=write)
    writer.start()
    bad = 0
    for i in range(size // chunk):
        before = expected[i - 1] if i else INITIAL_STATE
        hasher = ChainHasher(before, i * chunk)
        for o in range(0, chunk, PIECE):
            buf = free.get()
            view = memoryview(buf)[: min(PIECE, chunk - o)]
            fill(sock, view)
            hasher.update(view)
            todo.put((buf, len(view), i * chunk + o))
        bad += hasher.state() != expected[i]
    todo.put(None)
    writer.join()
    return bad


def receive_hashing_apart(sock, fd, size, chunk, expected) -> int:
    """hash-threads: this thread only receives; two threads hash alternate chunks (each
    verifies alone from its predecessor's entry); a fourth writes. Returns bad chunks."""
    free: queue.SimpleQueue = queue.SimpleQueue()
    todo: queue.SimpleQueue = queue.SimpleQueue()
    hashq = [queue.SimpleQueue(), queue.SimpleQueue()]
    for _ in range(8):
        free.put(bytearray(PIECE))
    bad = [0]

    def write() -> None:
        while (item := todo.get()) is not None:
            buf, n, off = item
            os.pwrite(fd, memoryview(buf)[:n], off)
            free.put(buf)

    def hash_(q) -> None:
        hasher = None
        while (item := q.get()) is not None:
            i, buf, n, off, last = item
            if hasher is None:
                hasher = ChainHasher(expected[i - 1] if i else INITIAL_STATE, i * chunk)
            hasher.update(memoryview(buf)[:n])
            todo.put((buf, n, off))
            if last:
                bad[0] += hasher.state() != expected[i]
                hasher = None

    threads = [threading.Thread(target=write)] + [
        threading.Thread(target=hash_, args=(q,)) for q in hashq
    ]
    for t in threads:
        t.start()
    for i in range(size // chunk):
        for o in range(0, chunk, PIECE):
            buf = free.get()
            n = min(PIECE, chunk - o)
            fill(sock, memoryview(buf)[:n])
            hashq[i % 2].put((i, buf, n, i * chunk + o, o + n == chunk))
    for q in hashq:
        q.put(None)
    for t in threads[1:]:
        t.join()
    todo.put(None)
    threads[0].join()
    return bad[0]


def receive(method, hashing, port, dest, size, chunk, expected, out) -> None:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    sock = socket.create_connection(("127.0.0.1", port))
    t0 = time.perf_counter()
    buf = memoryview(bytearray(chunk))
    mm = mmap.mmap(fd, size) if "mmap" in method else None
    mview = memoryview(mm) if mm is not None else None
    if method.startswith("splice"):
        pr, pw = os.pipe()
        pipesz = int(Path("/proc/sys/fs/pipe-max-size").read_text())  # what a non-root node gets
        pipesz = fcntl.fcntl(pw, fcntl.F_SETPIPE_SZ, min(pipesz, chunk))
    bad = 0
    for i in range(size // chunk if method not in ("writer-thread", "hash-threads") else 0):
        off = i * chunk
        if method.startswith("pwrite"):
            fill(sock, buf)
            data = buf
        elif method.startswith("mmap"):
            if method == "mmap+populate":  # one call faults the chunk's pages in, not 1/page
                mm.madvise(MADV_POPULATE_WRITE, off, chunk)
            data = mview[off : off + chunk]
            fill(sock, data)
        else:
            splice_chunk(sock.fileno(), pr, pw, fd, off, chunk, pipesz)
            if method == "splice+pread" and os.preadv(fd, [buf], off) == chunk:
                data = buf
            elif method == "splice+mmap":
                data = mview[off : off + chunk]
        if hashing and chunk_digest(i, data, chunk, expected) != expected[i]:
            bad += 1
        if method.startswith("pwrite"):  # only after verifying: safe for endgame duplicates
            step = PIECE if method == "pwrite/256k" else chunk
            for o in range(0, chunk, step):
                if os.pwrite(fd, data[o : o + step], off + o) != step:
                    raise OSError("short pwrite")
    if method == "writer-thread":
        bad = receive_handing_over(sock, fd, size, chunk, expected)
    elif method == "hash-threads":
        bad = receive_hashing_apart(sock, fd, size, chunk, expected)
    t1 = time.perf_counter()
    if mm is not None:
        mm.flush()
    os.fdatasync(fd)
    t2 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    sock.close()
    out.send({"wall": t1 - t0, "sync": t2 - t1, "cpu": cpu(r0, r1), "bad": bad,
              "minflt": r1.ru_minflt - r0.ru_minflt})  # fmt: skip


def run_once(method, hashing, src, dest, size, chunk, expected) -> dict:
    ctx = mp.get_context("fork")  # children inherit `expected` and the listener, nothing pickled
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        s_in, s_out = ctx.Pipe(duplex=False)
        r_in, r_out = ctx.Pipe(duplex=False)
        sender = ctx.Process(target=send, args=(listener, src, size, chunk, s_out))
        recv = ctx.Process(
            target=receive, args=(method, hashing, port, dest, size, chunk, expected, r_out)
        )
        for proc in (sender, recv):
            proc.start()
        res, sres = r_in.recv(), s_in.recv()
        for proc in (sender, recv):
            proc.join()
    res["send_cpu"] = sres["cpu"]
    with open(src, "rb") as a, open(dest, "rb") as b:  # spot-check first, middle, last chunk
        for off in (0, (size // chunk // 2) * chunk, size - chunk):
            if os.pread(a.fileno(), chunk, off) != os.pread(b.fileno(), chunk, off):
                res["bad"] += 1
    dest.unlink()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", action="append", help="where temp files go (repeatable)")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--chunk-mib", type=int, action="append", help="repeatable; default 4 and 1")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--src", type=Path, default=Path("/dev/shm/recvpath-src.bin"))
    ap.add_argument(
        "--method", action="append", help="only these (repeatable), e.g. pwrite/256k; +hash only"
    )
    args = ap.parse_args()
    methods = [(m, h) for m, h in METHODS if not args.method or (m in args.method and h)]
    dirs = [Path(d) for d in (args.dir or ["/dev/shm", "/var/tmp"])]
    size = args.size_mib * MIB
    print(f"hash: {'ChainHasher (libcrypto)' if ChainHasher else 'hashlib (fallback)'}")
    if not args.src.exists() or args.src.stat().st_size != size:
        with open(args.src, "wb") as fh:
            for _ in range(size // MIB):
                fh.write(os.urandom(MIB))
    results: dict[tuple, list[dict]] = {}
    for chunk in [c * MIB for c in (args.chunk_mib or [4, 1])]:
        expected = expected_states(args.src, size, chunk)
        for rep in range(args.reps):
            for d in dirs:
                for method, hashing in methods:
                    dest = d / f"recvpath-{os.getpid()}.part"
                    r = run_once(method, hashing, args.src, dest, size, chunk, expected)
                    results.setdefault((str(d), chunk, method, hashing), []).append(r)
                    print(f"  rep {rep} {d} {chunk // MIB} MiB {method:<13} hash={hashing:d} "
                          f"{size / r['wall'] / 1e6:7.0f} MB/s  cpu {r['cpu']:.2f}s "
                          f"sync {r['sync']:.2f}s bad {r['bad']}", flush=True)  # fmt: skip
    args.src.unlink()
    gib, med = size / GIB, statistics.median
    for d in dirs:
        rows = []
        for (dd, chunk, method, hashing), runs in results.items():
            base = results.get((dd, chunk, "pwrite", hashing), runs)
            mbs, cpus = [size / r["wall"] / 1e6 for r in runs], [r["cpu"] / gib for r in runs]
            b_mbs, b_cpu = med(size / r["wall"] / 1e6 for r in base), med(r["cpu"] for r in base)
            rows += [[
                chunk // MIB, method, "yes" if hashing else "no", round(med(mbs)),
                f"{med(mbs) / b_mbs:.2f}", f"{med(cpus):.2f}", f"{med(cpus) * gib / b_cpu:.2f}",
                f"{med(r['send_cpu'] for r in runs) / gib:.2f}",
                round(med(r["minflt"] for r in runs) / gib / 1000, 1),
                f"{med(r['sync'] for r in runs):.2f}", f"{(max(mbs) - min(mbs)) / med(mbs):.0%}",
                f"{(max(cpus) - min(cpus)) / med(cpus):.0%}", sum(r["bad"] for r in runs),
            ]] if dd == str(d) else []  # fmt: skip
        print(f"\n{d}  ({args.size_mib} MiB, {args.reps} reps, medians; x(a) = against pwrite, "
              "same chunk and hashing)")  # fmt: skip
        print(tabulate(rows, headers=[
            "chunk MiB", "method", "hash", "MB/s", "x(a)", "recv CPU s/GiB", "x(a)",
            "send CPU s/GiB", "minflt k/GiB", "sync s", "spread MB/s", "spread CPU", "bad",
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
