"""The Helm chart, offline: lint, CRD copy, values schema, rendering, RBAC coverage.

`helm template` runs here without a cluster; tests/e2e/test_chart_install.py proves the same
output is accepted by the real API server and that the RBAC is enough to reconcile.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pins import HELM, KUBE_VERSION

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modeldeploy"
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}




def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), f"{HELM} missing: run `make binaries`"
    proc = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(*sets: str, release: str = "rel", namespace: str = "mdsys",
           extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace,
            "--kube-version", KUBE_VERSION, *extra]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def allowed(docs: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    """Verbs the chart's ClusterRoles grant on group/resource (no resourceNames)."""
    verbs: set[str] = set()
    for role in by_kind(docs, "ClusterRole"):
        for rule in role["rules"]:
            if (group in rule["apiGroups"] and resource in rule["resources"]
                    and not rule.get("resourceNames")):
                verbs |= set(rule["verbs"])
    return verbs


# --- chart metadata and files ---------------------------------------------------------

def test_lint_is_clean() -> None:
    out = helm("lint", "--strict", str(CHART)).stdout
    assert "0 chart(s) failed" in out


def test_chart_crds_equal_crds_dir() -> None:
    src = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert src, "crds/ is empty"
    assert copy == src, ("charts/modeldeploy/crds/ differs from crds/: run `make chart-crds` "
                         f"(crds/: {sorted(src)}, chart: {sorted(copy)})")


def test_chart_versions() -> None:
    from modeldeploy import __version__

    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == __version__, "appVersion must be the operator's version"
    assert meta["kubeVersion"].startswith(">=")
    # The pinned local control plane satisfies the chart's kubeVersion.
    want = tuple(int(x) for x in re.findall(r"\d+", meta["kubeVersion"])[:2])
    have = tuple(int(x) for x in re.findall(r"\d+", KUBE_VERSION)[:2])
    assert have >= want


def test_values_documented_line_by_line() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = [
        f"{i + 1}: {line}" for i, line in enumerate(lines)
        if re.match(r"^\s*[A-Za-z][\w.-]*:", line) and "#" not in line
        and not (i and lines[i - 1].strip().startswith("#"))
    ]
    assert not undocumented, "keys without a comment line above:\n" + "\n".join(undocumented)


@pytest.mark.parametrize(("value", "message"), [
    ("replicaCount=two", "/replicaCount"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("image.digest=latest", "/image/digest"),
    ("operator.logFormat=xml", "/operator/logFormat"),
    ("operator.workers=0", "/operator/workers"),
    ("operator.healthPort=70000", "/operator/healthPort"),
    ("watch.allNamespaces=false", "/watch/namespaces"),
    ("watch.namespaces={Bad_NS}", "/watch/namespaces"),
    ("leaderElection.leaseSeconds=1", "/leaderElection/leaseSeconds"),
    ("serviceMonitor.interval=soon", "/serviceMonitor/interval"),
    ("resources.requests.cpu=lots", "/resources/requests/cpu"),
    ("rbac.enabled=true", "rbac"),
    ("priorityTiers.urgent.namespaces={a}", "urgent"),
    ("priorityTiers.critical.namespaces={Bad_NS}", "/priorityTiers/critical/namespaces/0"),
    ("modelMetrics.scraperNamespaces={Bad_NS}", "/modelMetrics/scraperNamespaces/0"),
    ("typo=1", "typo"),
])
def test_schema_rejects_bad_values(value: str, message: str) -> None:
    proc = helm("template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set", value,
                check=False)
    assert proc.returncode != 0, f"--set {value} was accepted"
    assert message in proc.stderr, proc.stderr


# --- the operator Deployment ----------------------------------------------------------

def test_deployment_is_hardened() -> None:
    docs = render()
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/modeldeploy/operator:0.1.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    health = next(p["containerPort"] for p in c["ports"] if p["name"] == "health")
    assert f"--health-port={health}" in c["args"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_operator_cli_accepts_the_rendered_args() -> None:
    """The chart and `modeldeploy run` agree on every flag, in both scopes."""
    from modeldeploy.cli import build_parser

    for sets in ((), ("watch.allNamespaces=false", "watch.namespaces={a,b}",
                      "replicaCount=3", "operator.verbose=true")):
        c = one(render(*sets), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        args = build_parser().parse_args(c["args"])
        assert args.command == "run"
        assert args.operator_namespace == "mdsys"
        assert args.health_port == 8081 and args.metrics_port == 8080
        if sets:
            assert args.namespace == ["a", "b"] and not args.all_namespaces
            assert args.leader_election and args.verbose
        else:
            assert args.all_namespaces and not args.leader_election


def test_priority_tier_rules_reach_the_operator() -> None:
    """priorityTiers.<tier>.namespaces → --priority-tier-namespaces, read back with the
    operator's own parser and rule; an empty list (the default) passes no rule."""
    from modeldeploy import tierpolicy
    from modeldeploy.cli import build_parser

    default = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert build_parser().parse_args(default["args"]).priority_tier_namespaces == []
    c = one(render("priorityTiers.critical.namespaces={prod,infra,prod}",
                   "priorityTiers.high.namespaces={prod}"),
            "Deployment")["spec"]["template"]["spec"]["containers"][0]
    rules = tierpolicy.parse_flag(build_parser().parse_args(c["args"]).priority_tier_namespaces)
    assert rules == {"critical": ("prod", "infra"), "high": ("prod",)}
    assert tierpolicy.refusal("critical", "team-x", rules) is not None
    assert tierpolicy.refusal("normal", "team-x", rules) is None


def test_model_metrics_settings_reach_the_operator() -> None:
    from modeldeploy.cli import build_parser

    def run_args(*sets: str) -> Any:
        c = one(render(*sets), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        return build_parser().parse_args(c["args"])

    default = run_args()
    assert default.scraper_namespace == ["monitoring"] and default.pod_monitor_label == []
    args = run_args("modelMetrics.scraperNamespaces={prometheus,monitoring}",
                    "modelMetrics.podMonitorLabels.release=kube-prometheus-stack")
    assert args.scraper_namespace == ["prometheus", "monitoring"]
    assert args.pod_monitor_label == ["release=kube-prometheus-stack"]
    assert run_args("modelMetrics.scraperNamespaces=null").scraper_namespace == []


def test_pod_monitor_rule_is_optional() -> None:
    assert allowed(render(), "monitoring.coreos.com", "podmonitors") == {
        "list", "watch", "create", "patch", "delete"}
    assert allowed(render("rbac.podMonitors=false"), "monitoring.coreos.com",
                   "podmonitors") == set()


def test_image_digest_wins_over_tag() -> None:
    digest = "sha256:" + "a" * 64
    c = one(render(f"image.digest={digest}", "image.tag=9.9"), "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == f"ghcr.io/modeldeploy/operator@{digest}"


# --- RBAC -----------------------------------------------------------------------------

def _walk_strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _walk_strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _walk_strings(v)]
    return []


@pytest.mark.parametrize("sets", [(), ("watch.allNamespaces=false", "watch.namespaces={a}",
                                       "replicaCount=2")])
def test_rbac_has_no_wildcards(sets: tuple[str, ...]) -> None:
    docs = render(*sets)
    roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in s for s in rule[field]), (role["metadata"]["name"], rule)
            assert set(rule["verbs"]) <= VERBS, rule
            assert "nonResourceURLs" not in rule
        assert not any("*" in s for s in _walk_strings(role["rules"]))


def test_cluster_scoped_names_contain_the_release() -> None:
    docs = render(release="alpha-one")
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        for obj in by_kind(docs, kind):
            assert "alpha-one" in obj["metadata"]["name"], obj["metadata"]["name"]


def test_rbac_covers_what_the_operator_touches() -> None:
    """Every kind the operator watches, applies or prunes has the verbs it needs.

    Reads the operator's own tables, so a new child kind without a rule fails here.
    """
    from modeldeploy.controller import WATCHED
    from modeldeploy.reconcile import PRUNABLE

    docs = render()
    for k in WATCHED:  # the informers: list, then watch
        assert {"list", "watch"} <= allowed(docs, k.group, k.plural), k.plural
    for k in PRUNABLE:
        # server-side apply: `create` for a new object, `patch` for an existing one
        assert {"list", "create", "patch", "delete"} <= allowed(docs, k.group, k.plural), \
            k.plural
    assert {"get", "list", "watch"} <= allowed(docs, "modeldeploy.io", "modeldeployments")
    assert "patch" in allowed(docs, "modeldeploy.io", "modeldeployments/status")
    assert "create" in allowed(docs, "", "events")
    assert {"get", "create", "list", "delete"} <= allowed(docs, "scheduling.k8s.io",
                                                          "priorityclasses")
    assert {"list", "watch"} <= allowed(docs, "apiextensions.k8s.io",
                                        "customresourcedefinitions")
    # Least privilege: model pods are only read; nothing is ever updated with PUT (only
    # the Lease, by the Role in the operator's namespace); no escalation verbs.
    assert allowed(docs, "", "pods") == {"list", "watch"}
    for role in by_kind(docs, "ClusterRole"):
        for rule in role["rules"]:
            assert not {"update", "deletecollection", "escalate", "bind",
                        "impersonate"} & set(rule["verbs"]), rule
    # The CA Secret in the operator's own namespace, which it may not watch.
    role = one(docs, "Role")
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]} in role["rules"]


def test_all_namespaces_binds_cluster_wide() -> None:
    docs = render()
    bindings = {b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")}
    assert bindings == {"rel-modeldeploy", "rel-modeldeploy-cluster"}
    assert [b["metadata"]["name"] for b in by_kind(docs, "RoleBinding")] == [
        "rel-modeldeploy-self"]
    assert allowed(docs, "", "namespaces") == set()


def test_listed_namespaces_bind_per_namespace() -> None:
    docs = render("watch.allNamespaces=false", "watch.namespaces={team-a,team-b,team-a}")
    crbs = {b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")}
    assert crbs == {"rel-modeldeploy-cluster"}, "namespaced rules must not bind cluster-wide"
    rbs = {(b["metadata"]["namespace"], b["roleRef"]["kind"], b["roleRef"]["name"])
           for b in by_kind(docs, "RoleBinding")}
    assert rbs == {("team-a", "ClusterRole", "rel-modeldeploy"),
                   ("team-b", "ClusterRole", "rel-modeldeploy"),
                   ("mdsys", "Role", "rel-modeldeploy")}
    assert allowed(docs, "", "namespaces") == {"list", "watch"}
    # Shared PriorityClasses are cleaned up only after listing every namespace's users.
    cluster = one(docs, "ClusterRole", "rel-modeldeploy-cluster")
    assert {"apiGroups": ["modeldeploy.io"], "resources": ["modeldeployments"],
            "verbs": ["list"]} in cluster["rules"]


def test_leader_election_with_replicas() -> None:
    single = render()
    assert not any(r["apiGroups"] == ["coordination.k8s.io"] for r in one(single, "Role")[
        "rules"])
    assert one(single, "Deployment")["spec"]["strategy"]["type"] == "Recreate"
    docs = render("replicaCount=2", "leaderElection.leaseName=my-lease")
    rules = one(docs, "Role")["rules"]
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "resourceNames": ["my-lease"], "verbs": ["get", "update"]} in rules
    c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--leader-election" in c["args"] and "--lease-name=my-lease" in c["args"]


# --- optional parts -------------------------------------------------------------------

def test_priority_classes_match_the_operator() -> None:
    from modeldeploy.constants import PRIORITY_TIERS
    from modeldeploy.render import qos

    assert by_kind(render(), "PriorityClass") == []
    pcs = {p["metadata"]["name"]: p for p in by_kind(render("priorityClasses.create=true"),
                                                     "PriorityClass")}
    assert set(pcs) == {qos.name(t) for t in PRIORITY_TIERS}
    for tier in PRIORITY_TIERS:
        mine, theirs = pcs[qos.name(tier)], qos.render(tier)
        for key in ("value", "globalDefault", "preemptionPolicy"):
            assert mine[key] == theirs[key], (tier, key)
        assert mine["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_service_monitor_only_when_the_crd_exists() -> None:
    assert by_kind(render("serviceMonitor.enabled=true"), "ServiceMonitor") == []
    docs = render("serviceMonitor.enabled=true",
                  extra=("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"))
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["spec"]["selector"].items()


def test_network_policy_is_optional() -> None:
    assert by_kind(render(), "NetworkPolicy") == []
    np = one(render("networkPolicy.enabled=true"), "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert {p["port"] for p in np["spec"]["ingress"][0]["ports"]} == {"health", "metrics"}



def test_metrics_api_is_off_by_default() -> None:
    docs = render()
    assert not by_kind(docs, "APIService")
    c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--metrics-api") for a in c["args"])


def test_metrics_api_reaches_the_operator_and_the_aggregator() -> None:
    """metricsApi.enabled: the APIService routes to a Service in front of the operator's
    port, the operator serves that port, and its RBAC covers exactly what
    metricsapi_server.py reads and writes."""
    from modeldeploy.cli import build_parser
    from modeldeploy.custommetrics import APISERVICE_NAME, GROUP, VERSION
    from modeldeploy.metricsapi_server import AUTH_CONFIGMAP

    docs = render("metricsApi.enabled=true", "metricsApi.port=7443",
                  "networkPolicy.enabled=true")
    api = one(docs, "APIService")
    assert api["metadata"]["name"] == APISERVICE_NAME
    assert (api["spec"]["group"], api["spec"]["version"]) == (GROUP, VERSION)
    assert "caBundle" not in api["spec"]  # the operator writes it at start
    svc = one(docs, "Service", api["spec"]["service"]["name"])
    assert api["spec"]["service"] == {"name": svc["metadata"]["name"], "namespace": "mdsys",
                                      "port": svc["spec"]["ports"][0]["port"]}
    dep = one(docs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    port = next(p for p in c["ports"] if p["name"] == svc["spec"]["ports"][0]["targetPort"])
    args = build_parser().parse_args(c["args"])
    assert args.metrics_api_port == port["containerPort"] == 7443
    policy = one(docs, "NetworkPolicy")
    assert {"ports": [{"port": "metrics-api", "protocol": "TCP"}]} in policy["spec"]["ingress"]

    cluster = {"apiGroups": ["apiregistration.k8s.io"], "resources": ["apiservices"],
               "resourceNames": [APISERVICE_NAME], "verbs": ["get", "patch"]}
    assert one(docs, "ClusterRole", "rel-modeldeploy-metrics-api")["rules"] == [cluster]
    auth = one(docs, "Role", "rel-modeldeploy-metrics-api-auth")
    assert auth["metadata"]["namespace"] == AUTH_CONFIGMAP[0]
    assert auth["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": [AUTH_CONFIGMAP[1]], "verbs": ["get"]}]
    bindings = [b for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding")
                if b["roleRef"]["name"].endswith(("metrics-api", "metrics-api-auth"))]
    assert sorted(b["roleRef"]["name"] for b in bindings) == [
        "rel-modeldeploy-metrics-api", "rel-modeldeploy-metrics-api-auth"]
    # No token or access reviews are made, so no system:auth-delegator.
    assert not any(b["roleRef"]["name"] == "system:auth-delegator"
                   for b in by_kind(docs, "ClusterRoleBinding"))
