"""How vLLM and TGI find the model files: the bundled image's `modelserver fetch` fills
the cache (and verifies checksums) in the layout contract.py defines, and the engines read
exactly that layout, offline once fetch has run."""

from __future__ import annotations

from typing import Any

from modeldeploy import contract
from modeldeploy.render.engines.builtin import fetch_plan
from modeldeploy.render.engines.engine_plan import FetchPlan
from modeldeploy.spec import Spec


def hub_cache_dir(spec: Spec) -> str:
    """The Hugging Face hub cache fetch fills for hf:// sources (models--org--name/…)."""
    return contract.hub_cache_dir(spec.cache_dir)


def engine_model(spec: Spec) -> str:
    """The model argument of an engine that reads the hub layout itself (vLLM, TGI): a
    mounted path, the folder fetch saved an https:// list in, or the hub id `org/name`,
    which the engine resolves in HF_HUB_CACHE."""
    if spec.model.scheme == "https":
        return contract.url_cache_dir(contract.source_urls(spec.model.source), spec.cache_dir)
    return spec.model.local_path() or spec.model.hf_id or spec.model.source


def engine_fetch(spec: Spec) -> FetchPlan | None:
    """The fetch step of vLLM and TGI: with a cache, and for https:// sources always
    (neither engine downloads a URL list)."""
    return fetch_plan(spec, always=spec.model.scheme == "https")


def hub_env(spec: Spec, fetch: FetchPlan | None) -> list[dict[str, Any]]:
    """Hugging Face env vars that make an engine read the layout fetch writes; offline once
    fetch has run, so the engine serves exactly the verified files and downloads nothing."""
    env = [{"name": "HF_HOME", "value": spec.cache_dir},
           {"name": "HF_HUB_CACHE", "value": hub_cache_dir(spec)}]
    if fetch is not None:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    return env
