"""Fixtures for tests against the real local control plane (hack/cluster.sh).

The session fixture starts the cluster only if it is not already running, and stops
only what it started. Each test gets its own namespace, deleted afterwards. The
operator runs as a subprocess whose log is attached to the report of a failing test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "hack" / "cluster.sh"
KUBECONFIG = ROOT / ".cache" / "cluster" / "kubeconfig"

pytestmark = pytest.mark.e2e


def _cluster(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CLUSTER_SH), cmd], capture_output=True, text=True)


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    """Path of the local control plane's kubeconfig; starts the cluster if needed."""
    started = False
    if _cluster("status").returncode != 0:
        up = subprocess.run(["bash", str(CLUSTER_SH), "up"], text=True)
        assert up.returncode == 0, "hack/cluster.sh up failed (see output above)"
        started = True
    os.environ["KUBECONFIG"] = str(KUBECONFIG)
    yield str(KUBECONFIG)
    if started and not os.environ.get("MODELDEPLOY_KEEP_CLUSTER"):
        _cluster("down")


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> Kubectl:
    """kubectl(*args, input=None, check=True) against the local cluster."""

    def run(*args: str, input: str | None = None, check: bool = True):
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def get_json(kubectl: Kubectl, *args: str) -> dict:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def wait_for(predicate: Callable[[], object], timeout: float = 60, interval: float = 0.5,
             what: str = "condition") -> object:
    """Poll until predicate() returns a truthy value; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc}")


class OperatorProcess:
    """The operator as a real subprocess (`python -m modeldeploy run ...`)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modeldeploy", "run", *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def operators(kubeconfig: str, tmp_path: Path, request: pytest.FixtureRequest):
    """The run_operator factory against any cluster's kubeconfig (a generator for a
    fixture to `yield from`)."""
    started: list[OperatorProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> OperatorProcess:
        full_env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONUNBUFFERED": "1", **(env or {})}
        op = OperatorProcess(list(extra), full_env, tmp_path / f"operator-{len(started)}.log")
        started.append(op.start())
        return op

    request.node.modeldeploy_operators = started
    yield start
    for op in started:
        op.stop()


@pytest.fixture
def run_operator(kubeconfig: str, tmp_path: Path, request: pytest.FixtureRequest):
    """Factory: run_operator(*extra_args, env=None) starts the operator; stopped at teardown.

    Its combined log is attached to the report when the test fails.
    """
    yield from operators(kubeconfig, tmp_path, request)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the operators' logs to the report of a failed test (call or setup)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, op in enumerate(getattr(item, "modeldeploy_operators", [])):
            rep.sections.append((f"operator log {i}", op.log()[-20000:]))
