"""The plain-HTTP reference: nginx serving a folder on 127.0.0.1, fetched by curl or aria2c.

Each fetch reports its wall time and the CPU-seconds of the client and of nginx
(its master and workers) during it, all from /proc.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from nodes import wait_for
from procstat import children, run_timed, total_cpu

CLIENTS = ("curl", "aria2c")


@dataclass(frozen=True)
class Fetch:
    seconds: float
    client_cpu: float
    server_cpu: float


def installed(client: str) -> bool:
    return bool(shutil.which("nginx") and shutil.which(client))


def taskset(cpus: str | None) -> list[str]:
    """Command prefix that pins a process and its children to cpus (none when cpus is None)."""
    return ["taskset", "-c", cpus] if cpus is not None else []


class Nginx:
    """nginx in the foreground with one worker, serving `folder`; `with Nginx(...) as web:`."""

    def __init__(
        self, folder: Path, conf_dir: Path, cpus: str | None = None, *, tls: bool = False
    ) -> None:
        self.folder = folder
        self.conf_dir = conf_dir
        self.cpus = cpus
        # HTTPS, TLS 1.3 only, with a self-signed certificate the clients do not check
        # (as p2pshare checks no authority either: it pins a fingerprint instead).
        self.tls = tls
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        nginx = shutil.which("nginx")
        if nginx is None:
            raise FileNotFoundError("nginx")
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = self.conf_dir / "nginx.conf"
        listen = f"127.0.0.1:{self.port}"
        if self.tls:
            cert, key = self._certificate()
            listen += (
                f" ssl; ssl_protocols TLSv1.3; ssl_certificate {cert}; ssl_certificate_key {key}"
            )
        conf.write_text(f"""
daemon off; worker_processes 1; pid {self.conf_dir}/nginx.pid;
error_log {self.conf_dir}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  server {{ listen {listen}; root {self.folder}; }} }}
""")
        self.proc = subprocess.Popen(
            [*taskset(self.cpus), nginx, "-c", str(conf), "-p", str(self.conf_dir)],
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: socket.create_connection(("127.0.0.1", self.port)).close() or True,
            10,
            "nginx",
            0.05,
        )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def _certificate(self) -> tuple[Path, Path]:
        """A P-256 key and self-signed certificate, as a p2pshare node's identity has."""
        cert, key = self.conf_dir / "cert.pem", self.conf_dir / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"]
            + ["-subj", "/CN=127.0.0.1"],
            check=True,
            capture_output=True,
        )
        return cert, key

    def pids(self) -> list[int]:
        """nginx's master and its worker(s)."""
        assert self.proc is not None
        master = self.proc.pid  # taskset execs nginx, so this is nginx's master either way
        return [master, *children(master)]

    def url(self, name: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/{name}"

    def fetch(
        self,
        client: str,
        name: str,
        dest: Path,
        before: Callable[[], None] | None = None,
    ) -> Fetch:
        """Fetch `name` into dest with client (pinned like nginx); dest is removed afterwards."""
        path = shutil.which(client)
        if path is None:
            raise FileNotFoundError(client)
        args = {
            "curl": ["-sSf", *(["-k", "--tlsv1.3"] if self.tls else []), "-o", str(dest)]
            + [self.url(name)],
            "aria2c": [
                *(["--check-certificate=false"] if self.tls else []),
                "-q",
                "-x1",
                "--allow-overwrite=true",
                "--file-allocation=none",
                "-d",
                str(dest.parent),
                "-o",
                dest.name,
                self.url(name),
            ],
        }[client]
        if before is not None:
            before()
        pids = self.pids()
        server_before = total_cpu(pids)
        seconds, cpu = run_timed([*taskset(self.cpus), path, *args])
        server_cpu = total_cpu(pids) - server_before
        dest.unlink()
        return Fetch(seconds, cpu, server_cpu)


def fetch_mirrors(webs: list[Nginx], name: str, dest: Path, before: Callable[[], None]) -> Fetch:
    """aria2c fetching `name` from every nginx at once, one connection each, the file
    split between them (the reference for several seeders); dest is removed afterwards."""
    path = shutil.which("aria2c")
    if path is None:
        raise FileNotFoundError("aria2c")
    args = ["-q", "-x1", f"-s{len(webs)}", "--allow-overwrite=true", "--file-allocation=none"]
    args += ["-d", str(dest.parent), "-o", dest.name, *(w.url(name) for w in webs)]
    before()
    pids = [pid for w in webs for pid in w.pids()]
    server_before = total_cpu(pids)
    seconds, cpu = run_timed([path, *args])
    server_cpu = total_cpu(pids) - server_before
    dest.unlink()
    return Fetch(seconds, cpu, server_cpu)
