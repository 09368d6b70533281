"""ConfigMap `<name>-clawdbot`: ready-to-use client configs, one per format a user meets.

Clawdbot was renamed (Moltbot, then OpenClaw); both programs are in use and their configs
differ in one place, so each gets its own file:
- `clawdbot.json`: Clawdbot 2026.1 (`~/.clawdbot/clawdbot.json`); its schema is strict
  and rejects any key it does not know.
- `openclaw.json`: OpenClaw (`~/.openclaw/openclaw.json`), the same provider block plus
  `request.allowPrivateNetwork` (its network guard refuses a provider whose host name
  resolves to a private address, a cluster Service or a LAN name, without it) and each
  model's `compat.supportsUsageInStreaming` (without it OpenClaw asks a custom provider
  for no usage and records every turn as 0 tokens, cached prefix included), and the
  provider's `timeoutSeconds`: the server's request timeout (OpenClaw's shorter default
  idle timeout gave up during a long CPU prefill that sends no token for minutes).
- `clawbot.json`: the deployment guide's own format (model_server + inference_params).
- `ca.crt`: the CA that signed the server certificate, for NODE_EXTRA_CA_CERTS.
The API key is a `${MODELDEPLOY_API_KEY}` reference, so the ConfigMap holds no secret;
`modeldeploy clawdbot-config NAME --format F` prints one with the key filled in.
Each format takes the base URL (`base_url`: spec.url_via, the Ingress or the Service);
the ConfigMap's use spec.base_url (the Ingress when there is one).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from modeldeploy.constants import CLAWDBOT_MIN_CONTEXT, SERVER_REQUEST_TIMEOUT_SECONDS
from modeldeploy.render.meta import metadata
from modeldeploy.spec import Spec

API_KEY_ENV = "MODELDEPLOY_API_KEY"
# The guide's client timeout (30 s), in milliseconds as its clawbot.json has it.
CLIENT_TIMEOUT_MS = 30_000


def compatible(spec: Spec) -> tuple[bool, str]:
    """Whether Clawdbot accepts this model, and why not."""
    cw = spec.model.context_window
    if cw < CLAWDBOT_MIN_CONTEXT:
        return False, (f"model.contextWindow {cw} is below Clawdbot's minimum of "
                       f"{CLAWDBOT_MIN_CONTEXT} tokens; Clawdbot will refuse this model")
    return True, f"contextWindow {cw} is accepted by Clawdbot"


def clawdbot_json(spec: Spec, api_key: str | None = None,
                  base_url: str | None = None) -> dict[str, Any]:
    provider = spec.clawdbot.provider_name
    key = api_key if api_key is not None else (
        f"${{{API_KEY_ENV}}}" if spec.auth.enabled else "no-key")
    return {
        "agents": {"defaults": {"model": {"primary": f"{provider}/{spec.model.served_name}"}}},
        "models": {"mode": "merge", "providers": {provider: {
            "baseUrl": base_url or spec.base_url,
            "apiKey": key,
            "api": "openai-completions",
            "models": [{
                "id": spec.model.served_name,
                "name": f"{spec.model.served_name} ({spec.namespace}/{spec.name})",
                "contextWindow": spec.model.context_window,
                "maxTokens": spec.defaults.max_tokens,
            }],
        }}},
    }


def openclaw_json(spec: Spec, api_key: str | None = None,
                  base_url: str | None = None) -> dict[str, Any]:
    config = clawdbot_json(spec, api_key, base_url)
    for provider in config["models"]["providers"].values():
        provider["request"] = {"allowPrivateNetwork": True}
        provider["timeoutSeconds"] = SERVER_REQUEST_TIMEOUT_SECONDS
        for model in provider["models"]:
            model["compat"] = {"supportsUsageInStreaming": True}
    return config


def clawbot_json(spec: Spec, api_key: str | None = None,
                 base_url: str | None = None) -> dict[str, Any]:
    del api_key  # the guide's format carries no key
    url = urlparse(base_url or spec.base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return {
        "model_server": {"protocol": url.scheme, "host": url.hostname, "port": port,
                         "timeout": CLIENT_TIMEOUT_MS},
        "inference_params": {"max_tokens": spec.defaults.max_tokens,
                             "temperature": spec.defaults.temperature,
                             "top_p": spec.defaults.top_p},
    }


def render(spec: Spec, ca_cert_pem: str | None = None) -> dict[str, Any] | None:
    if not spec.clawdbot.enabled:
        return None
    data = {f"{fmt}.json": json.dumps(make(spec), indent=2, sort_keys=True) + "\n"
            for fmt, make in FORMATS.items()}
    if ca_cert_pem:
        data["ca.crt"] = ca_cert_pem
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(spec, spec.clawdbot_configmap_name),
        "data": data,
    }


# Every client format, by name: the ConfigMap's file names and `clawdbot-config --format`.
FORMATS = {"clawdbot": clawdbot_json, "openclaw": openclaw_json, "clawbot": clawbot_json}
