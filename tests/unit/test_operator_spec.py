"""spec.parse: defaults in one place and derived names."""

from __future__ import annotations

import pytest
from helpers_operator import make_spec

pytestmark = pytest.mark.unit


def test_defaults_are_secure_and_match_the_guide() -> None:
    s = make_spec()
    assert s.model.served_name == "m"
    assert s.engine.kind == "builtin" and s.engine.max_batch_size == 8
    assert (s.defaults.max_tokens, s.defaults.temperature, s.defaults.top_p) == (2048, 0.7, 0.9)
    assert s.tls.mode == "operator" and s.tls.min_version == "1.3"
    assert s.auth.enabled and s.auth.generate
    assert s.network.port == 8080 and s.network.network_policy
    assert s.qos.priority_class_name == "modeldeploy-normal" and s.qos.guaranteed
    assert s.clawdbot.enabled and s.autoscaling is None and s.replicas == 1


def test_derived_names_and_urls() -> None:
    s = make_spec()
    assert s.endpoint == "m.ns.svc:8080"
    assert s.base_url == "https://m.ns.svc:8080/v1"
    assert s.api_key_secret_name == "m-api-keys" and s.tls_secret_name == "m-tls"
    ing = make_spec({"network": {"ingress": {"host": "chat.lan", "path": "/llm/"}}})
    assert ing.base_url == "https://chat.lan/llm/v1"
    plain = make_spec({"tls": {"mode": "disabled"}})
    assert plain.base_url == "http://m.ns.svc:8080/v1"


@pytest.mark.parametrize(("source", "scheme", "local", "network"), [
    ("hf://org/model", "hf", None, True),
    ("pvc://models/llama/8b", "pvc", "/models/models/llama/8b", False),
    ("https://example.com/m.tar", "https", None, True),
    ("file:///opt/models/m", "file", "/opt/models/m", False),
])
def test_model_sources(source: str, scheme: str, local: str | None, network: bool) -> None:
    m = make_spec({"model": {"source": source}}).model
    assert (m.scheme, m.local_path(), m.needs_network) == (scheme, local, network)


def test_autoscaling_defaults_and_cpu_target() -> None:
    a = make_spec({"autoscaling": {"maxReplicas": 3}}).autoscaling
    assert a is not None and (a.min_replicas, a.max_replicas, a.metric, a.target) == (
        1, 3, "inflightRequests", 4)
    cpu = make_spec({"autoscaling": {"maxReplicas": 3, "metric": "cpu"}}).autoscaling
    assert cpu is not None and cpu.target == 70


def test_user_secret_names_win() -> None:
    s = make_spec({"tls": {"mode": "secret", "secretName": "mine"},
                   "auth": {"apiKeys": {"generate": False, "secretName": "keys"}}})
    assert s.tls_secret_name == "mine" and s.api_key_secret_name == "keys"


def test_integer_quantities_become_strings() -> None:
    r = make_spec({"resources": {"cpu": 4, "memory": "16Gi", "gpus": 2}}).resources
    assert (r.cpu, r.memory, r.gpus) == ("4", "16Gi", 2)
