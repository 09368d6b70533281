"""A benchmark's worker process that imports modelserver from one source tree only (this
checkout, or a git worktree at a base commit), so two trees' engines run in the same
rounds. Requests go in as JSON lines on stdin; replies come back as JSON lines marked with
`marker`, so anything else the model libraries print on stdout is skipped."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def tree_env(src: Path, **extra: str) -> dict[str, str]:
    """The environment of a process that must import `src`'s server and operator only."""
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(
        [str(src / "images" / "server"), str(src / "operator")])}


def tree_commit(tree: Path) -> str | None:
    """The tree's HEAD, with "+dirty" when it has uncommitted changes to tracked files."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


class TreeWorker:
    """`script --worker ...args` run against the tree `src`; its first reply to
    {"op": "hello"} must name a modelserver imported from that tree."""

    def __init__(self, script: Path, src: Path, args: list[str], marker: str,
                 env: dict[str, str] | None = None, stop_timeout: float = 60) -> None:
        src = src.resolve()
        if not (src / "images" / "server" / "modelserver" / "engine" / "core.py").exists():
            raise SystemExit(f"{src}: no images/server/modelserver there")
        self.marker, self.stop_timeout = marker, stop_timeout
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(script).resolve()), "--worker", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=tree_env(src, **(env or {})))
        self.src = self.call({"op": "hello"})["modelserver"]
        if not Path(self.src).resolve().is_relative_to(src):
            raise RuntimeError(f"the worker imported {self.src}, not from {src}")

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(self.marker):
                reply = json.loads(line[len(self.marker):])
                if "error" in reply:
                    raise RuntimeError(f"worker: {reply['error']}")
                return reply
        raise RuntimeError(f"worker exited ({self.proc.wait()})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def serve(marker: str, handle: Any) -> None:
    """The worker's side of TreeWorker: answer each stdin JSON line with `handle(msg)`
    (after the "hello" that names the modelserver this process imported); an exception
    goes back as {"error"}, which the parent raises with its message."""
    import modelserver

    def reply(obj: dict[str, Any]) -> None:
        print(marker + json.dumps(obj), flush=True)

    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "hello":
                reply({"modelserver": str(Path(modelserver.__file__).parent)})
            else:
                reply(handle(msg))
        except Exception as exc:  # the parent raises it with the message
            reply({"error": f"{type(exc).__name__}: {exc}"})


def engine_drive() -> ModuleType:
    """modelserver.engine.drive of the tree this process imported; a tree older than it
    gets this checkout's copy loaded into its package, so a benchmark drives both trees'
    engines with the same code (it needs only core's events and Request, and
    SamplingParams, which every tree compared here has)."""
    try:
        from modelserver.engine import drive
    except ImportError:
        path = (Path(__file__).resolve().parents[1] / "images" / "server" / "modelserver"
                / "engine" / "drive.py")
        spec = importlib.util.spec_from_file_location("modelserver.engine.drive", path)
        drive = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = drive
        spec.loader.exec_module(drive)
    return drive
