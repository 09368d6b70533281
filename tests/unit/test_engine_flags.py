"""Every flag the operator renders for vLLM and TGI exists in that engine's own definitions.

tests/unit/engine_flags/ holds each engine's flags, the allowed values of its choice flags
and the env vars the operator relies on, each file headed by the source (repository, path,
version or commit) it was read from. Every engine × option combination the CRD allows is
rendered; a misspelled flag, a value outside a choice list, or an env var the engine does
not read fails here, not on a GPU node.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from helpers_operator import make_spec
from modeldeploy import contract
from modeldeploy.constants import VLLM_IMAGE
from modeldeploy.render import engines

pytestmark = pytest.mark.unit

FLAGS_DIR = Path(__file__).parent / "engine_flags"
FILES = {"vllm": "vllm-v0.11.0.txt", "tgi": "tgi-launcher-3.x.txt"}


def definitions(kind: str) -> dict[str, list[str]]:
    """Sections of a definitions file: [flags], [choices --x], [env], [positional]."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in (FLAGS_DIR / FILES[kind]).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            assert current is not None, f"{FILES[kind]}: {line!r} before any [section]"
            sections[current].append(line.strip())
    return sections


def test_definition_files_name_their_source() -> None:
    for kind, name in FILES.items():
        head = (FLAGS_DIR / name).read_text().splitlines()[:8]
        assert any("Source:" in h for h in head), name
        assert len(definitions(kind)["flags"]) > 40, name
    assert f"vllm-{VLLM_IMAGE.rsplit(':', 1)[1]}.txt" == FILES["vllm"], \
        "the vLLM pin moved: refresh engine_flags/ and contract.VLLM_TOOL_CALL_PARSERS"


def flags_and_values(args: list[str]) -> list[tuple[str, str | None]]:
    """(flag, value) pairs of a rendered command line; value None for a switch."""
    out: list[tuple[str, str | None]] = []
    for i, a in enumerate(args):
        if a.startswith("-"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out.append((a, None if nxt is None or nxt.startswith("-") else nxt))
    return out


def assert_flags(kind: str, args: list[str], context: object = "") -> None:
    d = definitions(kind)
    for flag, value in flags_and_values(args):
        assert flag in d["flags"], f"{kind}: {flag} is not a flag of the engine ({context})"
        choices = d.get(f"choices {flag}")
        if choices is not None:
            assert value in choices, f"{kind}: {flag} {value} not in {choices} ({context})"


def check(kind: str, spec: dict[str, Any]) -> None:
    d = definitions(kind)
    p = engines.plan(make_spec(spec))
    assert_flags(kind, p.args, spec)
    for env in p.env:
        assert env["name"] in d["env"], f"{kind}: env {env['name']} not relied on ({spec})"
    if kind == "vllm":
        assert p.command == ["vllm", "serve"] and not p.args[0].startswith("-")
    if kind == "tgi":
        assert not ("--dtype" in p.args and "--quantize" in p.args), spec


SOURCES = [("hf://org/model", True), ("pvc://models/m", False),
           ("https://example.com/m/config.json,https://example.com/m/w.safetensors", True)]
TOKENS: list[dict[str, int]] = [{}, {"maxTotalTokens": 8192},
                                {"maxInputTokens": 4000, "maxTotalTokens": 8192}]


@pytest.mark.parametrize("kind", ["vllm", "tgi"])
def test_every_combination_renders_only_real_flags(kind: str) -> None:
    parsers: list[str | None] = (
        [None, *contract.VLLM_TOOL_CALL_PARSERS] if kind == "vllm" else [None])
    # TLS is the gateway's for both engines: no mode may add an engine flag.
    tls_modes = ["operator", "disabled"]
    n = 0
    for (dtype, quant, parser, tls, auth, gpus, (source, cacheable), cache, tokens,
         revision) in itertools.product(
            contract.DTYPES, contract.QUANTIZATIONS_BY_ENGINE[kind], parsers, tls_modes,
            [True, False], [0, 1, 4], SOURCES, [False, True], TOKENS, [None, "main"]):
        if cache and not cacheable:
            continue
        if parser not in (None, "hermes") and (dtype, auth, gpus, cache) != ("auto", True, 1,
                                                                            False):
            continue  # every parser once, the rest of the product with one
        engine: dict[str, Any] = {"kind": kind, "dtype": dtype, "quantization": quant,
                                  **tokens}
        if parser:
            engine["toolCallParser"] = parser
        model: dict[str, Any] = {"source": source, "contextWindow": 32768}
        if cache:
            model["cache"] = {"size": "50Gi"}
        if revision and source.startswith("hf://"):
            model["revision"] = revision
        check(kind, {"engine": engine, "model": model, "tls": {"mode": tls},
                     "auth": {"enabled": auth}, "resources": {"gpus": gpus}})
        n += 1
    assert n > 500


def test_a_misspelled_flag_or_value_fails() -> None:
    with pytest.raises(AssertionError, match="not a flag"):
        assert_flags("vllm", ["m", "--enable-ssl-refesh"])
    with pytest.raises(AssertionError, match="not in"):
        assert_flags("tgi", ["--quantize", "int8"])
