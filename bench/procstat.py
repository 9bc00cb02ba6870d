"""What a process cost, read from /proc: CPU-seconds, peak RSS, page-cache residency.

CPU comes from utime + stime in /proc/PID/stat (every thread of the process, live
or ended, in clock ticks). A child that has exited is read while it is still a
zombie: `run_timed` waits for it with WNOWAIT, reads its stat, then reaps it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_PROT_READ = 1
_MAP_SHARED = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, waited_children: bool = False) -> float:
    """utime + stime of the whole process so far (with waited_children, those of the
    children it has waited for too: the server's index writer process). Raises OSError if
    it is gone."""
    fields = _stat_fields(pid)
    # After the name: state is field 3 of stat(5), utime 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if waited_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def total_cpu(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def children(pid: int) -> list[int]:
    """Direct children of pid (nginx's workers), found through each process's ppid."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_timed(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run cmd to its end, its output (a progress bar too) thrown away; returns (wall
    seconds, its CPU-seconds from /proc).

    Raises CalledProcessError if it fails.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(proc.pid)
    if proc.wait():
        raise subprocess.CalledProcessError(proc.returncode, list(cmd))
    return seconds, cpu


def cached_fraction(path: Path) -> float:
    """Share of the file's pages in the page cache (mincore), 0..1; nan if unknown."""
    size = path.stat().st_size
    if size == 0:
        return 1.0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return float("nan")
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec):
                return float("nan")
            return sum(b & 1 for b in vec) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def evict(path: Path) -> None:
    """Drop the file's clean pages from the page cache (no privileges needed for one file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding path (tmpfs, ext4, ...)."""
    best, kind = "", "?"
    target = str(path.resolve())
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mount, fstype, *_ = line.split()
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fstype
    return kind


WARM_PIECE = 1 << 20


def warm(folder: Path, size: int) -> None:
    """Hand the next writer into folder's filesystem memory in the state every measured
    writer gets: just freed. On this kind of VM, memory that stayed free a few seconds is
    given back to the host (virtio-balloon free page reporting), and the first write into
    it then costs ~2 s/GiB more in the kernel's copy (perf: copy_folio_from_iter_atomic),
    whoever writes. Without this, whichever of p2pshare, curl or the floor runs right
    after another's file was deleted gets warm memory and the others pay for it."""
    path = folder / f".warm-{os.getpid()}"
    block = bytes(WARM_PIECE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for offset in range(0, size, WARM_PIECE):
            os.pwrite(fd, block, offset)
    finally:
        os.close(fd)
        path.unlink()
