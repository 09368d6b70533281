"""benchmarks/gpu.sh as far as a machine without a GPU can take it: the bundle it carries
(under the device tool's 64 MiB), installed offline and serving the server's imports on
its own, and the script's dry run (the same steps on the CPU) with the server's packages
of this venv hidden, so only the bundle can provide them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / ".cache" / "gpu-bundle"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_bundle  # noqa: E402

# A meta-path finder that hides this venv's copies of the given top-level modules: they
# import only from sys.path entries outside the venv (the bundle), else not at all.
BLOCKER = textwrap.dedent("""
    import importlib.machinery, sys, sysconfig
    HIDDEN = set({names!r})
    VENV = (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])

    class HideVenv:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] not in HIDDEN or path is not None:
                return None  # submodules follow their package's own __path__
            dirs = [p for p in sys.path if p and not p.startswith(VENV)]
            spec = importlib.machinery.PathFinder.find_spec(name, dirs)
            if spec is None:
                raise ModuleNotFoundError(f"{{name}} hidden from the venv", name=name)
            return spec

    sys.meta_path.insert(0, HideVenv)
""")


def bundle_modules() -> set[str]:
    """Top-level modules the bundle's wheels provide."""
    names = set()
    for whl in (BUNDLE / "wheels").glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            for entry in z.namelist():
                top = entry.split("/")[0]
                if not top.endswith((".dist-info", ".data")):
                    names.add(top.removesuffix(".py").split(".")[0])
    return names - {"__pycache__"}


@pytest.fixture(scope="module")
def bundle() -> Path:
    """Built here (PyPI) or reused when up to date, as `make gpu-bundle` does."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bundle.py"), "build",
                    str(BUNDLE)], check=True, timeout=600, cwd=ROOT)
    return BUNDLE


def test_bundle_fits_the_carry_limit_for_every_python(bundle: Path) -> None:
    total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert 1 * 2**20 < total < 64 * 2**20
    wheels = {w.name for w in (bundle / "wheels").glob("*.whl")}
    for py in gpu_bundle.PYTHONS:  # the one compiled package, one wheel per CPython
        tag = "cp" + py.replace(".", "")
        assert any(w.startswith("pydantic_core-") and f"-{tag}-{tag}-" in w for w in wheels), py
    assert (bundle / "tokenizer" / "tokenizer.json").stat().st_size < 8 * 2**20
    assert {"fastapi", "uvicorn", "pydantic", "pydantic_core", "starlette"} <= bundle_modules()


@pytest.mark.parametrize("method", ["pip", "unzip"])
def test_bundle_alone_imports_the_server(bundle: Path, tmp_path: Path, method: str) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bundle.py"), "install",
                    str(bundle), str(site), "--method", method], check=True, timeout=300)
    hidden = sorted(bundle_modules())
    script = BLOCKER.format(names=hidden) + textwrap.dedent(f"""
        import importlib
        try:
            import fastapi
        except ModuleNotFoundError:
            pass  # hidden: the venv's copy is out of reach
        else:
            sys.exit("the venv's fastapi is still importable")
        sys.path[:0] = [{str(site)!r}, {str(ROOT / "images/server")!r},
                        {str(ROOT / "operator")!r}]
        import modelserver.app, modelserver.cli
        for name in {hidden!r}:
            mod = sys.modules.get(name) or importlib.import_module(name)
            origin = mod.__file__ or list(mod.__path__)[0]  # namespace: no __file__
            assert origin.startswith({str(site)!r}), (name, origin)
        print("OK", modelserver.app.build_app.__name__)
    """)
    # -I: no PYTHONPATH, no user site; the venv's site-packages stay (torch lives there)
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.strip() == "OK build_app"


@pytest.mark.timeout(1200)
def test_gpu_sh_dry_run_serves_text_for_every_token(bundle: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(names=sorted(bundle_modules())))
    out = tmp_path / "out"
    env = {**os.environ, "GPU_SH_DRY_RUN": "1", "PY": sys.executable, "OUT_DIR": str(out),
           "GPU_BUNDLE": str(bundle), "PYTHONPATH": str(blocker)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env,
                          capture_output=True, text=True, timeout=1100, cwd=tmp_path)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "server imports OK, from the bundle" in proc.stdout, log
    card = json.loads((out / "gpu-card.json").read_text())
    assert card["measured_bandwidth_gbs"] > 0 and "dry run" in card["card"]
    sweep = json.loads((out / "gpu-qwen-tiny.json").read_text())
    rows = sweep["engines"]["server"]["rows"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    # the last pass: the server with --compile on (CUDA graphs on a GPU), in the report too
    compiled = json.loads((out / "gpu-qwen-tiny-compile.json").read_text())
    assert compiled["server_args"] == ["--compile=on"]
    (row,) = compiled["engines"]["server"]["rows"]
    assert row["tokens_per_request"] == [8] and row["tokens_without_text"] == 0, row
    assert "qwen-tiny bfloat16 (server --compile=on)" in (out / "gpu-report.txt").read_text()
    for r in rows:
        assert r["tokens_per_request"] == [8], r
        # Qwen's 152k vocabulary, SmolLM2's 49k tokenizer: every token still streams text
        assert r["tokens_without_text"] == 0, r
    # ... because no id without text can win greedy decoding: its LM-head row (tied to the
    # embeddings here, as in Qwen2.5-0.5B) is zero; past the tokenizer that is most ids
    from safetensors.torch import load_file
    from server_bench import random_model_dir

    weights = load_file(random_model_dir("qwen-tiny") / "model.safetensors")
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    from transformers import AutoTokenizer

    n_tok = len(AutoTokenizer.from_pretrained(bundle / "tokenizer"))
    assert head.shape[0] > n_tok  # Qwen's vocabulary, larger than SmolLM2's tokenizer
    assert not head[n_tok:].any()
    assert head[:n_tok].abs().sum(dim=1).count_nonzero() > n_tok * 0.9
    report = (out / "gpu-report.txt").read_text()
    assert "qwen-tiny" in report and "ceiling: decode step >=" in report


def run_gpu_sh(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")],
                          env={**os.environ, "OUT_DIR": str(tmp_path / "out"), **env},
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_gpu_sh_refuses_clearly_without_bundle_or_cuda(bundle: Path, tmp_path: Path) -> None:
    proc = run_gpu_sh(tmp_path, PY=sys.executable, GPU_BUNDLE=str(tmp_path / "none"))
    assert proc.returncode == 2 and "run 'make gpu-bundle'" in proc.stderr, proc.stderr
    proc = run_gpu_sh(tmp_path, PY=str(tmp_path / "no-python"), GPU_BUNDLE=str(bundle))
    assert proc.returncode == 2 and "set PY to a Python >= 3.11" in proc.stderr, proc.stderr
    # this machine has no GPU: the real run must stop at the preflight, before any model
    proc = run_gpu_sh(tmp_path, PY=sys.executable, GPU_BUNDLE=str(bundle))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sees no CUDA device" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
