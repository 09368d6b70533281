"""Issue 13: priority tiers restricted per namespace (the pure rule, its flag, what
reconcile does with a refusal) and the model pods' /metrics for a scraper (the
NetworkPolicy rule for its namespace, the PodMonitor and when it is made)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from helpers_operator import BASE, inputs, make_spec
from modeldeploy import status, tierpolicy
from modeldeploy.cli import build_parser, main
from modeldeploy.context import Context
from modeldeploy.reconcile import reconcile
from modeldeploy.render import desired, networkpolicy, podmonitor, tls
from modeldeploy.status import Observed
from test_operator_reconcile import FakeKube, body

pytestmark = pytest.mark.unit
RULES = {"critical": ("prod", "infra")}


# --- the rule ----------------------------------------------------------------------------

def test_a_listed_tier_is_refused_outside_its_namespaces() -> None:
    assert tierpolicy.refusal("critical", "prod", RULES) is None
    assert tierpolicy.refusal("critical", "infra", RULES) is None
    why = tierpolicy.refusal("critical", "team-x", RULES)
    assert why is not None
    for part in ("critical", "team-x", "prod, infra", "priorityTiers.critical.namespaces",
                 "--priority-tier-namespaces"):
        assert part in why, part


def test_a_tier_not_listed_stays_open_everywhere() -> None:
    for tier in ("high", "normal", "low"):
        assert tierpolicy.refusal(tier, "team-x", RULES) is None
    assert tierpolicy.refusal("critical", "team-x", {}) is None  # no rule: today's behaviour


def test_flag_parsing() -> None:
    assert tierpolicy.parse_flag(["critical=prod,infra", "high=prod"]) == {
        "critical": ("prod", "infra"), "high": ("prod",)}
    assert tierpolicy.parse_flag([]) == {}


@pytest.mark.parametrize(("item", "message"), [
    ("critical", "expected TIER=NAMESPACE"),
    ("urgent=prod", "unknown tier 'urgent'"),
    ("critical=", "name at least one namespace"),
    ("critical=Prod_NS", "'Prod_NS' is not a namespace name"),
])
def test_bad_flag_values_are_refused_naming_the_flag(item: str, message: str) -> None:
    with pytest.raises(ValueError, match="--priority-tier-namespaces") as err:
        tierpolicy.parse_flag([item])
    assert message in str(err.value)


def test_a_tier_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="tier high given twice"):
        tierpolicy.parse_flag(["high=a", "high=b"])


@pytest.mark.parametrize(("args", "message"), [
    (["--priority-tier-namespaces", "urgent=prod"], "unknown tier 'urgent'"),
    (["--scraper-namespace", "Not_A_Namespace"], "--scraper-namespace 'Not_A_Namespace'"),
    (["--pod-monitor-label", "release"], "--pod-monitor-label 'release'"),
])
def test_run_refuses_bad_settings_before_starting(args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as err:
        main(["run", "--namespace", "x", *args])
    assert message in str(err.value)


def test_run_flags_parse() -> None:
    args = build_parser().parse_args([
        "run", "--priority-tier-namespaces=critical=prod", "--scraper-namespace=monitoring",
        "--pod-monitor-label=release=kps"])
    assert args.priority_tier_namespaces == ["critical=prod"]
    assert args.scraper_namespace == ["monitoring"]
    assert args.pod_monitor_label == ["release=kps"]


# --- what reconcile does with a refusal ---------------------------------------------------

def run(kube: FakeKube, b: dict[str, Any], **ctx_settings: Any) -> Context:
    ctx = Context(kube=kube, operator_namespace="ops", **ctx_settings)  # type: ignore[arg-type]
    for obj in kube.objects.values():  # what the informers would have delivered
        ctx.children.put(copy.deepcopy(obj))
    asyncio.run(reconcile(ctx, b))
    return ctx


def conditions(kube: FakeKube, b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in b["status"]["conditions"]}


def test_a_refused_tier_gets_no_pods_a_condition_and_an_event() -> None:
    kube = FakeKube()
    b = body({**BASE, "qos": {"priority": "critical"}, "autoscaling": {"maxReplicas": 2}})
    run(kube, b, priority_tier_namespaces=RULES)  # the namespace is "ns"
    kinds = {k for (k, _, _) in kube.objects}
    assert not kinds & {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert {"Service", "Secret", "ConfigMap", "NetworkPolicy"} <= kinds  # the rest stays
    assert "PriorityClass" not in kinds  # a refused tier's class is not made either
    conds = conditions(kube, b)
    assert conds["PriorityAllowed"]["status"] == "False"
    assert conds["PriorityAllowed"]["reason"] == "TierNotAllowed"
    assert "namespace ns" in conds["PriorityAllowed"]["message"]
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "TierNotAllowed")
    assert conds["Ready"]["message"] == conds["PriorityAllowed"]["message"]
    assert b["status"]["phase"] == "Failed"
    assert ("create", "Event", "") in kube.writes
    # a resync neither writes nor repeats the Event
    kube.writes.clear()
    run(kube, b, priority_tier_namespaces=RULES)
    assert kube.writes == []


def test_a_rule_set_later_removes_the_running_pods_and_allowing_brings_them_back() -> None:
    kube = FakeKube()
    b = body({**BASE, "qos": {"priority": "critical"}})
    run(kube, b)  # no rule yet: served as before
    assert ("Deployment", "ns", "m") in kube.objects
    keys = kube.objects[("Secret", "ns", "m-api-keys")]["data"]["keys"]
    assert conditions(kube, b)["PriorityAllowed"]["status"] == "True"

    run(kube, b, priority_tier_namespaces=RULES)
    assert ("Deployment", "ns", "m") not in kube.objects
    assert ("delete", "Deployment", "m") in kube.writes

    run(kube, b, priority_tier_namespaces={"critical": ("ns",)})
    assert ("Deployment", "ns", "m") in kube.objects
    assert kube.objects[("Secret", "ns", "m-api-keys")]["data"]["keys"] == keys
    assert conditions(kube, b)["PriorityAllowed"]["status"] == "True"


def test_status_of_a_refusal_wins_over_the_rest() -> None:
    refusal = status.Cond("PriorityAllowed", "False", "TierNotAllowed", "why")
    phase, conds, _ = status.compute(make_spec(), Observed(1, None, [], [refusal]))
    by_type = {c.type: c for c in conds}
    assert phase == "Failed"
    assert by_type["Ready"] == status.Cond("Ready", "False", "TierNotAllowed", "why")
    assert "PriorityAllowed" in status.EVENT_CONDITIONS


# --- /metrics for the scraper ----------------------------------------------------------------

def test_networkpolicy_admits_the_scraper_namespace_to_the_serving_port_only() -> None:
    spec = make_spec({"network": {"port": 9443}})
    np = networkpolicy.render(spec, "ops", ("monitoring",))
    assert np is not None
    rules = np["spec"]["ingress"]
    assert rules[1] == {
        "from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In",
             "values": ["monitoring"]}]}}],
        "ports": [{"protocol": "TCP", "port": 9443}]}
    # the clients' rule is unchanged: the scraper is not one of them
    assert "monitoring" not in str(rules[0])
    plain = networkpolicy.render(spec, "ops")
    assert plain is not None and len(plain["spec"]["ingress"]) == 1


@pytest.mark.parametrize(("tls_spec", "expected"), [
    ({}, "verify"),
    ({"mode": "certManager", "issuerRef": {"name": "ca"}}, {"insecureSkipVerify": True}),
    ({"mode": "secret", "secretName": "mine"}, {"insecureSkipVerify": True}),
    ({"mode": "disabled"}, None),
])
def test_podmonitor(tls_spec: dict[str, Any], expected: Any) -> None:
    spec = make_spec({"tls": tls_spec})
    pm = podmonitor.render(spec, {"release": "kps", "modeldeploy.io/name": "forged"})
    assert (pm["apiVersion"], pm["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert pm["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pm["metadata"]["labels"]["release"] == "kps"
    assert pm["metadata"]["labels"]["modeldeploy.io/name"] == "m"  # ours win
    deployment = next(c for c in desired(spec, inputs()) if c["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == spec.scheme
    if expected == "verify":
        tls_config = endpoint["tlsConfig"]
        assert tls_config["ca"] == {"secret": {"name": "m-tls", "key": "ca.crt"}}
        assert tls_config["serverName"] in tls.dns_names(spec)  # the certificate's name
        secret = tls.render_secret(spec, inputs().tls_leaf, "CA", "x")  # type: ignore[arg-type]
        assert "ca.crt" in secret["data"]
    else:
        assert endpoint.get("tlsConfig") == expected


def test_podmonitor_only_where_the_api_is_served() -> None:
    spec = make_spec()
    assert "PodMonitor" not in {c["kind"] for c in desired(spec, inputs())}
    assert "PodMonitor" in {c["kind"] for c in desired(spec, inputs(pod_monitors=True))}

    kube = FakeKube()
    b = body(dict(BASE))
    run(kube, b)  # a fresh Context: the API is presumed absent until its informer lists
    assert not any(k == "PodMonitor" for (k, _, _) in kube.objects)
    ctx = Context(kube=kube, operator_namespace="ops",  # type: ignore[arg-type]
                  pod_monitor_labels={"release": "kps"})
    ctx.missing_kinds.discard("PodMonitor")  # what the informer does once it has listed
    for obj in kube.objects.values():
        ctx.children.put(copy.deepcopy(obj))
    asyncio.run(reconcile(ctx, b))
    pm = kube.objects[("PodMonitor", "ns", "m")]
    assert pm["metadata"]["labels"]["release"] == "kps"
