"""Real local servers for the reliability tests: an MLflow tracking server, a PostgreSQL cluster
and optuna-dashboard.

Both bind 127.0.0.1 on a free port, live in a temporary directory, and are stopped
(whole process group) when their ``with`` block ends, whatever happened inside.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

__all__ = ["free_port", "mlflow_server", "optuna_dashboard", "postgres_bin", "postgres_cluster"]

#: Seconds a server gets to come up on a loaded 2-core machine.
START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_http_ok(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"no answer from {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@contextmanager
def mlflow_server(backend_uri: str, folder: Path, workers: int = 1) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 over ``backend_uri``, artifacts under ``folder``; yields its URL."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "mlflow-server.log"
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http_ok(f"{url}/health", process, log)
        yield url
    finally:
        _stop(process)


@contextmanager
def optuna_dashboard(storage_url: str, folder: Path) -> Iterator[str]:
    """``optuna-dashboard`` (the console script installed beside this Python) on 127.0.0.1 over
    ``storage_url``; yields its URL."""
    script = Path(sys.executable).parent / "optuna-dashboard"
    assert script.exists(), f"{script} not found: pip install -e '.[dashboard]'"
    port = free_port()
    log = folder / "optuna-dashboard.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(script), storage_url, "--host", "127.0.0.1", "--port", str(port)], cwd=folder,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http_ok(f"{url}/api/studies", process, log)
        yield url
    finally:
        _stop(process)


def postgres_bin() -> Optional[Path]:
    """Folder holding ``initdb`` and ``pg_ctl`` (PATH, else Debian's /usr/lib/postgresql/<v>/bin)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _server_user() -> Optional[str]:
    """PostgreSQL refuses to run as root: as root, run it as ``postgres`` (Debian's package makes it)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


@contextmanager
def postgres_cluster(database: str = "mlflow") -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (trust auth) with ``database``; yields its URI."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, "no PostgreSQL binaries"
    user = _server_user()
    # Not pytest's tmp_path: its parents are private to the test user, and the server may run as another.
    root = Path(tempfile.mkdtemp(prefix="flowsweep-pg-"))
    if user:
        shutil.chown(root, user=user)
    port = free_port()
    log = root / "postgres.log"

    def run(*args: str) -> None:
        done = subprocess.run(args, user=user, cwd=root, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    data = root / "data"
    started = False
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "flowsweep", "--auth=trust", "--no-locale",
            "-E", "UTF8", "--no-sync")  # fmt: skip
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "120", "start")
        started = True
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "flowsweep", database)
        yield f"postgresql+psycopg2://flowsweep@127.0.0.1:{port}/{database}"  # SQLAlchemy 2.1 would pick psycopg 3
    finally:
        if started:
            subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           user=user, cwd=root, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
