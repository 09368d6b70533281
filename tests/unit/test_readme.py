"""The README stays true: its API table is generated from the CRD, and every `make`
target it names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.unit


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_api_table_matches_the_crd() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "hack" / "api_docs.py")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_make_target_named_in_the_readme_exists() -> None:
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    assert {"demo", "test"} <= named
    listed = subprocess.run(["make", "-C", str(ROOT), "-pRrq", "-f", "Makefile", ":"],
                            capture_output=True, text=True).stdout
    targets = set(re.findall(r"^([a-zA-Z][\w-]*):", listed, re.M))
    assert named <= targets, f"README names make targets that do not exist: {named - targets}"
