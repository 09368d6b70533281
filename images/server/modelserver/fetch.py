"""Model sources → a local folder (plus an optional .gguf file name), with checksums.

Sources: a local folder, a local `.gguf` file, `file:///…`, `hf://org/name[@revision]`
(huggingface_hub, the real download path) and `https://…` file lists (comma-separated
URLs, each saved under the cache folder by its file name).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from modeldeploy import contract

from .config import Checksum

log = logging.getLogger("modelserver.fetch")


class FetchError(RuntimeError):
    """The model could not be made available locally; the message says what to check."""


@dataclass
class LocalModel:
    directory: Path
    gguf_file: str | None = None  # file name inside `directory` when the model is a GGUF

    @property
    def label(self) -> str:
        return str(self.directory / self.gguf_file) if self.gguf_file else str(self.directory)


def _explain_os_error(exc: OSError, where: Path) -> FetchError:
    if exc.errno == errno.ENOSPC:
        return FetchError(
            f"no space left while writing under {where}: free space there or point "
            f"--model-cache-dir at a larger volume (check `df -h {where}` and quotas)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FetchError(
            f"permission denied writing under {where}: make the folder writable for uid "
            f"{os.getuid()} (in Kubernetes: fsGroup / an emptyDir or PVC mount), or choose "
            "another --model-cache-dir"
        )
    return FetchError(f"{type(exc).__name__} under {where}: {exc}")


def _hf_source(source: str, revision: str | None) -> tuple[str, str | None]:
    repo = source[len("hf://"):]
    if "@" in repo:
        repo, rev = repo.split("@", 1)
        revision = revision or rev
    return repo.strip("/"), revision


def _default_cache(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("HF_HOME") or Path.home() / ".cache" / "modelserver")


def _download_urls(urls: list[str], dest: Path) -> None:
    import httpx  # imported late: `fetch` is the only user

    dest.mkdir(parents=True, exist_ok=True)
    for url in urls:
        name = Path(unquote(urlparse(url).path)).name
        if not name:
            raise FetchError(f"cannot derive a file name from {url}")
        target = dest / name
        if target.exists():
            log.info("already present: %s", target)
            continue
        tmp = target.with_suffix(target.suffix + ".part")
        log.info("downloading %s → %s", url, target)
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=60) as resp:
                if resp.status_code != 200:
                    raise FetchError(f"GET {url} answered HTTP {resp.status_code}")
                with open(tmp, "wb") as fh:
                    for chunk in resp.iter_bytes(1 << 20):
                        fh.write(chunk)
            os.replace(tmp, target)
        except httpx.HTTPError as exc:
            raise FetchError(f"download of {url} failed: {exc}") from exc


def hub_cache_dir(cache: Path) -> Path:
    """Where hf:// models go under the cache folder (contract.hub_cache_dir)."""
    return Path(contract.hub_cache_dir(str(cache)))


def url_cache_dir(urls: list[str], cache: Path) -> Path:
    """Where an https:// file list is saved under the cache folder (contract.url_cache_dir)."""
    return Path(contract.url_cache_dir(urls, str(cache)))


def resolve(
    source: str, revision: str | None = None, cache_dir: str | None = None,
    download: bool = True,
) -> LocalModel:
    """Make `source` available locally (downloading if needed) and return where it is."""
    if source.startswith("file://"):
        source = unquote(urlparse(source).path)
    if source.startswith("hf://"):
        repo, rev = _hf_source(source, revision)
        cache = _default_cache(cache_dir)
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(
                repo_id=repo, revision=rev, cache_dir=str(hub_cache_dir(cache)),
                local_files_only=not download,
            )
        except OSError as exc:
            if exc.errno is not None:  # disk full, permissions: say what to check
                raise _explain_os_error(exc, cache) from exc
            raise FetchError(f"cannot fetch hf://{repo}@{rev or 'main'}: {exc}") from exc
        except Exception as exc:  # hub errors have many types; name the repo either way
            raise FetchError(f"cannot fetch hf://{repo}@{rev or 'main'}: {exc}") from exc
        return _local(Path(path))
    if source.startswith(("https://", "http://")):
        urls = contract.source_urls(source)
        cache = _default_cache(cache_dir)
        dest = url_cache_dir(urls, cache)
        try:
            if download:
                _download_urls(urls, dest)
        except OSError as exc:
            raise _explain_os_error(exc, dest) from exc
        ggufs = [Path(urlparse(u).path).name for u in urls if u.endswith(".gguf")]
        return LocalModel(dest, ggufs[0] if ggufs else None)
    return _local(Path(source))


def _local(path: Path) -> LocalModel:
    if not path.exists():
        raise FetchError(f"model path {path} does not exist")
    if path.is_file():
        if path.suffix != ".gguf":
            raise FetchError(f"{path} is a file but not a .gguf: give a folder or a .gguf file")
        return LocalModel(path.parent, path.name)
    if not os.access(path, os.R_OK | os.X_OK):
        raise FetchError(f"model folder {path} is not readable by uid {os.getuid()}")
    return LocalModel(path)


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(model: LocalModel, checksums: list[Checksum]) -> None:
    """Raise FetchError naming the file and both digests on the first mismatch."""
    for c in checksums:
        path = model.directory / c.file
        if not path.exists() and model.gguf_file and c.file == model.gguf_file:
            path = model.directory / model.gguf_file
        if not path.is_file():
            raise FetchError(f"checksum given for {c.file}, but {path} does not exist")
        actual = file_digest(path, c.algo)
        if actual != c.digest:
            raise FetchError(
                f"checksum mismatch for {c.file}: expected {c.algo}:{c.digest}, "
                f"got {c.algo}:{actual}"
            )
        log.info("checksum ok: %s (%s)", c.file, c.algo)


def fetch(
    source: str, revision: str | None, cache_dir: str | None, checksums: list[Checksum]
) -> LocalModel:
    if cache_dir:
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            probe = Path(cache_dir) / ".modelserver-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise _explain_os_error(exc, Path(cache_dir)) from exc
        free = shutil.disk_usage(cache_dir).free
        log.info("cache dir %s: %.1f GiB free", cache_dir, free / 2**30)
    model = resolve(source, revision, cache_dir, download=True)
    verify(model, checksums)
    return model
