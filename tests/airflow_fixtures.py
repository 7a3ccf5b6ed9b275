"""Airflow test setup shared by the DAG, REST API and Celery tests.

Airflow reads its configuration when it is first imported, so importing this module (before any
``airflow`` import) points it at a temporary AIRFLOW_HOME with this repository's DAG folder. The
session fixture `airflow_db` creates the SQLite metadata database there once.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
SERVE = REPO / "scripts" / "airflow_serve.sh"

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="vnp-airflow-home-"))
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
})

TINY_FASTA = """>seq_a some description
ATGGCTAGCTAGGATCCGATCGATCGGCTAGCTAGCTAACGTAGCTAGCATCGATCGACTGACTAGCTAGGCTAACCGTA
GCTAGCATGCATCGACTGACGATCGTACGATCGACTAGCTAGCTAGCTACGACTGAC
>seq_b
TTGACCGGTAACCGGTTAACCGGATCGATCGGATCCATGCATGCAAACCCGGGTTTAAACCCGGGTTTACGTACGTAC
>seq_c
ATGAAACCCGGGTTTAAACCCGGGTTTATGCCCAAAGGGTTTCCCAAAGGGTTTAAACCCGGGTTTCCCAAAGGGTTTAC
"""


def write_tiny_fasta(path: Path) -> Path:
    path.write_text(TINY_FASTA)
    return path


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in the temporary AIRFLOW_HOME (created once per session)."""
    from airflow.utils import db

    db.initdb()
    return AIRFLOW_HOME


def load_dagbag(known_pools: set[str] | None = None):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), known_pools=known_pools)


def demo_conf(input_path: Path, output_dir: Path, metrics_db: Path, **extra: Any) -> dict[str, Any]:
    return {"input_path": str(input_path), "output_dir": str(output_dir), "demo": True, "gpu_slots": 0,
            "chunk_size": 60, "metrics_db": str(metrics_db), **extra}


# ---- a local Airflow started with scripts/airflow_serve.sh -----------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class AirflowServer:
    """scripts/airflow_serve.sh in its own process group, plus a small REST client."""

    def __init__(self, home: Path, port: int, env: Mapping[str, str] | None = None) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "AIRFLOW_HOME_DIR": str(home), "AIRFLOW_PORT": str(port),
                    "GPU_SLOTS": "1", **(env or {})}
        self.env.pop("AIRFLOW_HOME", None)  # the script sets it from AIRFLOW_HOME_DIR
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None
        self.output = home / "serve.out"

    def start(self, timeout: float = 150.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(["bash", str(SERVE)], cwd=REPO, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airflow_serve.sh exited {self.proc.returncode}:\n{self.log_tail()}")
            if "Airflow is up" in self.output.read_text(errors="replace"):
                return
            time.sleep(1)
        raise RuntimeError(f"Airflow did not come up in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Children that outlived the script (same process group) get the same treatment.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        parts = [self.output.read_text(errors="replace")[-3000:]] if self.output.exists() else []
        for log in sorted((self.home / "logs" / "services").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def listeners(self) -> list[tuple[str, int]]:
        """(address, port) of every TCP listener opened by the processes this server started."""
        import psutil

        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        pids = {root.pid} | {p.pid for p in root.children(recursive=True)}
        return sorted({(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp")
                       if c.status == psutil.CONN_LISTEN and c.pid in pids})

    # ---- REST ----
    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path} -> {exc.code}: {exc.read().decode()[:500]}") from None
        return json.loads(text) if text else None

    def login(self) -> None:
        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        user, password = next(iter(passwords.items()))
        self.token = self.request("POST", "/auth/token", {"username": user, "password": password})["access_token"]

    def wait_for_dag(self, dag_id: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dags = {d["dag_id"] for d in self.request("GET", "/api/v2/dags")["dags"]}
            if dag_id in dags:
                return
            time.sleep(2)
        raise AssertionError(f"{dag_id} was not parsed in {timeout:.0f} s:\n{self.log_tail()}")

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf)})
        return run["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 150.0) -> str:
        quoted = urllib.request.quote(run_id, safe="")
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.request.quote(run_id, safe="")
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")["task_instances"]

    def run_to_success(self, dag_id: str, conf: Mapping[str, Any], timeout: float) -> dict[str, dict[str, Any]]:
        """Trigger a run, assert it succeeds, return its task instances by task id."""
        run_id = self.trigger(dag_id, conf)
        state = self.wait_for_run(dag_id, run_id, timeout=timeout)
        assert state == "success", self.log_tail()
        return {ti["task_id"]: ti for ti in self.task_instances(dag_id, run_id)}


@pytest.fixture
def serve_factory() -> Iterator:
    """Start `AirflowServer`s; every one started is stopped at teardown."""
    started: list[AirflowServer] = []

    def start(home: Path, env: Mapping[str, str] | None = None) -> AirflowServer:
        server = AirflowServer(home, free_port(), env)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
