"""Every engine reads the model where `modelserver fetch` writes it.

The layout comes from fetch.py's own functions (hub_cache_dir, url_cache_dir), not a copy of
it: vLLM and TGI get HF_HOME/HF_HUB_CACHE on fetch's hub folder, go offline once fetch has
run (so they serve exactly the verified files), and an https:// source is the folder fetch
saved it in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_operator import arg_value, make_spec
from modeldeploy.render import engines
from modelserver.fetch import hub_cache_dir, url_cache_dir

pytestmark = pytest.mark.unit

URLS = "https://example.com/m/config.json, https://example.com/m/w.safetensors"


def env(plan: engines.EnginePlan) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in plan.env}


def fetch_cache_dir(plan: engines.EnginePlan) -> Path:
    assert plan.fetch is not None
    return Path(arg_value(plan.fetch.args, "--cache-dir"))


@pytest.mark.parametrize("kind", ["vllm", "tgi"])
def test_hf_models_are_read_from_fetchs_hub_folder_offline(kind: str) -> None:
    p = engines.plan(make_spec({"engine": {"kind": kind}, "tls": {"mode": "disabled"},
                                "model": {"source": "hf://org/model", "revision": "v1",
                                          "cache": {"size": "50Gi"}}}))
    cache = fetch_cache_dir(p)
    e = env(p)
    assert e["HF_HUB_CACHE"] == str(hub_cache_dir(cache))
    assert Path(e["HF_HOME"]) / "hub" == hub_cache_dir(cache)  # HF_HOME's own default
    assert e["HF_HUB_OFFLINE"] == "1"
    if kind == "tgi":
        assert e["HUGGINGFACE_HUB_CACHE"] == str(hub_cache_dir(cache))
    model = p.args[0] if kind == "vllm" else arg_value(p.args, "--model-id")
    assert model == "org/model" and arg_value(p.args, "--revision") == "v1"
    assert "--download-dir" not in p.args


@pytest.mark.parametrize("kind", ["vllm", "tgi"])
def test_https_models_are_read_from_fetchs_url_folder(kind: str) -> None:
    for cache in (True, False):  # neither engine downloads a URL list: fetch runs anyway
        model = {"source": URLS, **({"cache": {"size": "5Gi"}} if cache else {})}
        p = engines.plan(make_spec({"engine": {"kind": kind}, "tls": {"mode": "disabled"},
                                    "model": model}))
        urls = [u.strip() for u in URLS.split(",")]
        want = str(url_cache_dir(urls, fetch_cache_dir(p)))
        got = p.args[0] if kind == "vllm" else arg_value(p.args, "--model-id")
        assert got == want and env(p)["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("kind", ["vllm", "tgi"])
def test_without_fetch_the_engine_downloads_into_the_same_layout(kind: str) -> None:
    p = engines.plan(make_spec({"engine": {"kind": kind}, "tls": {"mode": "disabled"}}))
    assert p.fetch is None and "HF_HUB_OFFLINE" not in env(p)
    assert env(p)["HF_HUB_CACHE"] == str(hub_cache_dir(Path(make_spec().cache_dir)))


def test_builtin_reads_its_own_cache_dir() -> None:
    p = engines.plan(make_spec({"model": {"source": "hf://org/model",
                                          "cache": {"size": "50Gi"}}}))
    assert arg_value(p.args, "--model-cache-dir") == str(fetch_cache_dir(p))
