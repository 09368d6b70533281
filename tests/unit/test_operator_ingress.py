"""An Ingress that works with the server's security: ingress-nginx annotations, trusted
proxies for the server's allow-list, and `clawdbot-config --via ingress|service`."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_operator import arg_value, make_spec
from modeldeploy import cli
from modeldeploy.constants import SERVER_MAX_BODY_BYTES, SERVER_REQUEST_TIMEOUT_SECONDS
from modeldeploy.crd import crd
from modeldeploy.render import engines, ingress

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NGINX = "nginx.ingress.kubernetes.io/"
LAN = {"allowFrom": {"ipBlocks": ["192.168.1.0/24"]}}


def annotations(network: dict[str, Any], **spec: Any) -> dict[str, str]:
    ing = ingress.render(make_spec({"network": network, **spec}))
    assert ing is not None
    return ing["metadata"].get("annotations") or {}


def nginx_size_bytes(size: str) -> int:
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


@pytest.mark.parametrize("class_name", ["nginx", None])
def test_nginx_annotations_fit_an_llm_api(class_name: str | None) -> None:
    ing: dict[str, Any] = {"host": "chat.lan"}
    if class_name:
        ing["className"] = class_name
    a = annotations({"ingress": ing})
    # nginx must wait for a long prefill as long as the server does
    assert int(a[NGINX + "proxy-read-timeout"]) >= SERVER_REQUEST_TIMEOUT_SECONDS
    assert int(a[NGINX + "proxy-send-timeout"]) >= SERVER_REQUEST_TIMEOUT_SECONDS
    # every body the server takes (Clawdbot's are ~40 kB) passes the proxy too
    assert nginx_size_bytes(a[NGINX + "proxy-body-size"]) >= SERVER_MAX_BODY_BYTES >= 40_000
    assert a[NGINX + "proxy-buffering"] == "off"  # SSE tokens as they come
    assert a[NGINX + "backend-protocol"] == "HTTPS"  # TLS on by default: the pods speak it


def test_plain_backend_gets_no_backend_protocol() -> None:
    a = annotations({"ingress": {"host": "chat.lan"}}, tls={"mode": "disabled"})
    assert NGINX + "backend-protocol" not in a
    assert a[NGINX + "proxy-buffering"] == "off"


def test_the_users_annotations_win() -> None:
    a = annotations({"ingress": {"host": "chat.lan", "annotations": {
        NGINX + "proxy-read-timeout": "3600", NGINX + "proxy-body-size": "0",
        "team": "chat"}}})
    assert a[NGINX + "proxy-read-timeout"] == "3600"
    assert a[NGINX + "proxy-body-size"] == "0"
    assert a["team"] == "chat"
    assert a[NGINX + "proxy-send-timeout"] == annotations(
        {"ingress": {"host": "chat.lan"}})[NGINX + "proxy-send-timeout"]


@pytest.mark.parametrize("class_name", ["traefik", "haproxy"])
def test_other_classes_get_only_their_users_annotations(class_name: str) -> None:
    assert annotations({"ingress": {"host": "chat.lan", "className": class_name}}) == {}
    assert annotations({"ingress": {"host": "chat.lan", "className": class_name,
                                    "annotations": {"x": "y"}}}) == {"x": "y"}


# ---- trusted proxies ----------------------------------------------------------------------
def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_builtin_renders_each_trusted_proxy() -> None:
    spec = make_spec({"network": {**LAN, "ingress": {
        "host": "chat.lan", "trustedProxies": ["10.244.0.0/16", "fd00:10:244::/56"]}}})
    assert spec.network.ingress.trusted_proxies == ("10.244.0.0/16", "fd00:10:244::/56")
    args = engines.plan(spec).args
    assert flag_values(args, "--trusted-proxy-cidr") == ["10.244.0.0/16", "fd00:10:244::/56"]
    assert arg_value(args, "--allow-cidr") == "192.168.1.0/24"


def test_no_trusted_proxy_flag_without_them() -> None:
    for network in ({**LAN}, {"ingress": {"host": "chat.lan"}}):
        assert "--trusted-proxy-cidr" not in engines.plan(make_spec({"network": network})).args


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_crd_field_and_the_rule_that_makes_it_impossible_to_miss() -> None:
    field = _schema()["properties"]["network"]["properties"]["ingress"]["properties"][
        "trustedProxies"]
    assert field["type"] == "array"
    assert "isCIDR" in field["x-kubernetes-validations"][0]["rule"]
    rules = [r for r in _schema()["x-kubernetes-validations"]
             if r.get("fieldPath") == ".network.ingress.trustedProxies"]
    assert len(rules) == 1
    rule = rules[0]
    assert rule["message"].startswith("network.ingress.trustedProxies is required")
    # the rule mirrors spec.AllowFrom.server_cidrs: ipBlocks alone, for every engine (the
    # gateway in front of vLLM and TGI enforces the same allow-list)
    for part in ("allowFrom.ipBlocks", "allowFrom.namespaces", "allowFrom.podSelector",
                 "ingress.trustedProxies"):
        assert part in rule["rule"], part
    assert "engine.kind" not in rule["rule"]


def test_the_ingress_example_lists_its_controllers() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "autoscaled-ingress.yaml").read_text())
    spec = make_spec(doc["spec"])
    assert spec.network.allow_from.server_cidrs == ("192.168.1.0/24",)
    assert spec.network.ingress.nginx and spec.network.ingress.trusted_proxies
    assert flag_values(engines.plan(spec).args, "--trusted-proxy-cidr") == list(
        spec.network.ingress.trusted_proxies)


# ---- clawdbot-config --via --------------------------------------------------------------
INGRESS = {"network": {"ingress": {"host": "chat.lan", "path": "/llm"}}}


def test_url_via_ingress_or_service() -> None:
    with_ingress, without = make_spec(INGRESS), make_spec()
    assert with_ingress.url_via(None) == with_ingress.base_url == "https://chat.lan/llm/v1"
    assert with_ingress.url_via("ingress") == "https://chat.lan/llm/v1"
    assert with_ingress.url_via("service") == "https://m.ns.svc:8080/v1"
    assert without.url_via(None) == without.url_via("service") == "https://m.ns.svc:8080/v1"
    with pytest.raises(SystemExit, match="^--via ingress: .*no network.ingress"):
        cli.client_url(without, "ingress")


class FakeKube:
    """The two reads `clawdbot-config` makes: the ModelDeployment and its key Secret."""

    objects: dict[tuple[str, str], dict[str, Any]] = {}
    reads: list[str] = []

    def __init__(self, client: Any) -> None:
        pass

    async def get(self, kind: Any, name: str, namespace: str) -> dict[str, Any] | None:
        FakeKube.reads.append(name)
        return FakeKube.objects.get((kind.kind, name))


def run_config(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
               spec: dict[str, Any], *args: str) -> dict[str, Any]:
    import lightkube
    from modeldeploy import kube

    class Client:
        namespace = "ns"

    monkeypatch.setattr(lightkube, "AsyncClient", Client)
    monkeypatch.setattr(kube, "Kube", FakeKube)
    FakeKube.reads = []
    FakeKube.objects = {
        ("ModelDeployment", "m"): {"metadata": {"uid": "u"}, "spec": spec},
        ("Secret", "m-api-keys"): {"data": {"primary": base64.b64encode(b"sk-1").decode()}},
    }
    assert cli.main(["clawdbot-config", "m", *args]) == 0
    return json.loads(capsys.readouterr().out)


def base_url(config: dict[str, Any]) -> str:
    return config["models"]["providers"]["modeldeploy"]["baseUrl"]


def test_clawdbot_config_via(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture) -> None:
    spec = {"model": {"source": "hf://o/m"}, **INGRESS}
    default = run_config(monkeypatch, capsys, spec)
    assert base_url(default) == "https://chat.lan/llm/v1"
    assert default["models"]["providers"]["modeldeploy"]["apiKey"] == "sk-1"
    assert base_url(run_config(monkeypatch, capsys, spec, "--via", "service")) == \
        "https://m.ns.svc:8080/v1"
    guide = run_config(monkeypatch, capsys, spec, "--via", "service", "--format", "clawbot")
    assert guide["model_server"]["host"] == "m.ns.svc"
    assert guide["model_server"]["port"] == 8080
    plain = {"model": {"source": "hf://o/m"}}
    assert base_url(run_config(monkeypatch, capsys, plain)) == "https://m.ns.svc:8080/v1"


def test_clawdbot_config_via_ingress_without_one(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match="--via ingress"):
        run_config(monkeypatch, capsys, {"model": {"source": "hf://o/m"}},
                   "--via", "ingress")
    assert FakeKube.reads == ["m"]  # refused before the key Secret was read


def test_the_configmap_keeps_the_ingress_url() -> None:
    from modeldeploy.render import clawdbot

    cm = clawdbot.render(make_spec(INGRESS))
    assert cm is not None
    data = json.loads(cm["data"]["clawdbot.json"])
    assert base_url(data) == "https://chat.lan/llm/v1"
