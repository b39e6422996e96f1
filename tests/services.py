"""Real services for tests, each started in a temporary folder on free ports and stopped
exactly as started: a PostgreSQL cluster (Debian's postgresql; ``initdb`` + ``pg_ctl``) and
an ``mlflow server`` on it with proxied artifacts. Nothing else on the machine is touched."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's versioned folder."""
    if initdb := shutil.which("initdb"):
        folder = Path(initdb).resolve().parent  # /usr/local/bin/initdb may be a link into it
        if (folder / "pg_ctl").exists() and (folder / "createdb").exists():
            return folder
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` system user."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class Postgres:
    folder: Path
    port: int
    bin: Path

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://lmblocks@127.0.0.1:{self.port}/mlflow"

    def start(self) -> None:
        data, log = self.folder / "data", self.folder / "postgres.log"
        existed = data.exists()
        if not existed:
            self.folder.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.folder, "postgres", "postgres")
            subprocess.run(_as_postgres_user(
                [str(self.bin / "initdb"), "-D", str(data), "-U", "lmblocks", "--auth=trust",
                 "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        subprocess.run(_as_postgres_user(
            [str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
             f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start"]),
            check=True, capture_output=True, timeout=120)
        subprocess.run(_as_postgres_user(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
             "lmblocks", "mlflow"]), check=not existed, capture_output=True, timeout=60)

    def stop(self) -> None:
        subprocess.run(_as_postgres_user(
            [str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w",
             "stop"]), check=False, capture_output=True, timeout=120)


@dataclass
class MlflowServer:
    backend: str
    artifacts: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.artifacts.parent / f"mlflow-server-{self.port}.log"

    def start(self, timeout: float = 120) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "a")  # noqa: SIM115 -- the server's, open while it runs
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server not up at {self.uri} after {timeout} s")

    def stop(self) -> None:
        """Its whole process group (the server and its gunicorn/uvicorn workers), nothing else."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    return out


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (a node's own temp dir), with every
    process under them: one Ray node started by a test, and nothing else on the machine."""
    roots = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmdline:
                roots.append(int(entry))
    children, found, todo = _children(), set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return sorted(found)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# A cluster joined by address uses token authentication only when told to (Ray turns it on by
# itself only for a new local cluster): every node and driver of a real cluster sets it, with
# the token in ~/.ray/auth_token (shared home) or $RAY_AUTH_TOKEN.
CLUSTER_ENV = {"RAY_AUTH_MODE": "token"}


@dataclass
class RayNode:
    """One node of a real multi-process Ray cluster (``ray start``), in its own temp dir."""

    temp_dir: Path
    head_port: int
    head: bool

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.head_port}"

    def start(self, num_cpus: int = 1) -> None:
        where = ["--head", f"--port={self.head_port}", "--node-ip-address=127.0.0.1",
                 "--include-dashboard=false"] if self.head else [
            f"--address={self.address}", "--node-ip-address=127.0.0.1"]
        proc = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "start", *where,
             f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={self.temp_dir}",
             "--disable-usage-stats"],
            capture_output=True, text=True, timeout=180, check=False,
            env={**os.environ, **CLUSTER_ENV})
        if proc.returncode:
            raise RuntimeError(f"ray start failed: {proc.stderr[-2000:]}")

    def stop(self) -> None:
        """Exactly this node's processes (found by its temp dir), never ``ray stop``: killed
        until none is left (a raylet may start a worker between a scan and its kill)."""
        deadline = time.time() + 60
        while (pids := processes_mentioning(str(self.temp_dir))) and time.time() < deadline:
            kill_all(pids)
            time.sleep(0.5)
