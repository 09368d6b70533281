"""The Helm chart against the real API server: dry-run, install, upgrade, uninstall,
and the operator run with the chart's own credentials.

Also holds the helpers tests/e2e/test_chart_rbac.py uses: installing a release, minting a
kubeconfig for its ServiceAccount through the TokenRequest API, and starting the operator
with it (ChartOperator).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pins import HELM, KUBE_VERSION

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modeldeploy"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]

# Namespaced kinds a release may create, and the cluster-scoped ones (for orphan checks).
NAMESPACED_KINDS = ("deployments,services,serviceaccounts,roles,rolebindings,"
                    "networkpolicies,configmaps,secrets")
CLUSTER_KINDS = "clusterroles,clusterrolebindings,priorityclasses"




def helm(kubeconfig: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), f"{HELM} missing: run `make binaries`"
    proc = subprocess.run([str(HELM), "--kubeconfig", kubeconfig, *args], capture_output=True,
                          text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll predicate() until truthy; fail naming `what` and its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def set_args(values: dict[str, str]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


@dataclass
class Release:
    name: str
    namespace: str
    kubeconfig: str
    installed: bool = False

    @property
    def fullname(self) -> str:
        return self.name if "modeldeploy" in self.name else f"{self.name}-modeldeploy"

    def install(self, values: dict[str, str]) -> str:
        out = helm(self.kubeconfig, "install", self.name, str(CHART), "-n", self.namespace,
                   "--create-namespace", "--wait", "--timeout", "90s", *set_args(values))
        self.installed = True
        return out.stdout

    def upgrade(self, values: dict[str, str]) -> str:
        return helm(self.kubeconfig, "upgrade", self.name, str(CHART), "-n", self.namespace,
                    "--wait", "--timeout", "90s", *set_args(values)).stdout

    def uninstall(self) -> None:
        if self.installed:
            helm(self.kubeconfig, "uninstall", self.name, "-n", self.namespace, "--wait",
                 "--timeout", "60s", check=False)
            self.installed = False


@pytest.fixture
def release(kubeconfig: str, kubectl: Kubectl) -> Iterator[Release]:
    """A release with a unique name in its own namespace; uninstalled at teardown."""
    suffix = uuid.uuid4().hex[:6]
    rel = Release(f"md-{suffix}", f"chart-{suffix}", kubeconfig)
    yield rel
    rel.uninstall()
    kubectl("delete", "namespace", rel.namespace, "--ignore-not-found", "--wait=false")


def token_kubeconfig(kubectl: Kubectl, service_account: str, namespace: str,
                     path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a TokenRequest token."""
    token = kubectl("create", "token", service_account, "-n", namespace,
                    "--duration", "1h").stdout.strip()
    assert token.count(".") == 2, "not a JWT"
    admin = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    user = f"{namespace}-{service_account}"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "local", "user": user,
                                                 "namespace": namespace}}],
        "current-context": user,
    }))
    path.chmod(0o600)
    return path


FORBIDDEN = re.compile(r"forbidden|\b403\b", re.I)


class ChartOperator:
    """Installs the chart into a test namespace once, then starts operators (through
    conftest's run_operator) with a kubeconfig holding only the chart SA's token.

    The operator's own namespace is the test namespace (where the operator's scenarios
    look for the CA Secret), so the release goes there too. replicaCount is 0: the
    operator runs as a local process, since kwok pods run no processes.
    """

    def __init__(self, start: Callable[..., Any], kubectl: Kubectl, kubeconfig: str,
                 namespace: str, tmp_path: Path, cluster_wide: bool = False,
                 extra_values: dict[str, str] | None = None) -> None:
        self._start = start
        self.kubectl = kubectl
        self.namespace = namespace
        self.tmp_path = tmp_path
        self.cluster_wide = cluster_wide
        self.extra_values = extra_values or {}
        self.release = Release(f"rbac-{namespace}", namespace, kubeconfig)
        self.config: Path | None = None
        self.started: list[Any] = []

    def values(self) -> dict[str, str]:
        values = {"replicaCount": "0"}
        if not self.cluster_wide:
            values |= {"watch.allNamespaces": "false",
                       "watch.namespaces": f"{{{self.namespace}}}"}
        return values | self.extra_values

    def install(self) -> Path:
        if self.config is None:
            self.release.install(self.values())
            for name in (self.release.fullname, f"{self.release.fullname}-cluster"):
                no_wildcards(json.loads(self.kubectl("get", "clusterrole", name, "-o",
                                                     "json").stdout))
            self.config = token_kubeconfig(self.kubectl, self.release.fullname,
                                           self.namespace, self.tmp_path / "sa-kubeconfig")
            user = yaml.safe_load(self.config.read_text())["users"][0]["user"]
            assert list(user) == ["token"], "the operator must hold nothing but the token"
        return self.config

    def __call__(self, *extra: str, env: dict[str, str] | None = None) -> Any:
        config = self.install()
        op = self._start(*extra, env={**(env or {}), "KUBECONFIG": str(config)})
        self.started.append(op)
        return op

    def close(self) -> list[str]:
        """Stop the operators, uninstall; return the refused requests in their logs."""
        denied = [line for op in self.started for line in op.log().splitlines()
                  if FORBIDDEN.search(line)]
        if self.cluster_wide:
            # The cluster-wide release pairs with `run --all-namespaces`; the scenarios
            # still pass --namespace (so as not to touch other tests' resources), which
            # makes kopf list namespaces, a right only the per-namespace release grants.
            denied = [line for line in denied if '"namespaces" in API group ""' not in line
                      and "namespaces is forbidden" not in line]
        for op in self.started:
            op.stop()
        self.release.uninstall()
        return denied


def labelled(kubectl: Kubectl, release: Release) -> set[str]:
    """Every object (cluster-wide) carrying the release's instance label."""
    sel = f"app.kubernetes.io/instance={release.name}"
    found: set[str] = set()
    for args in (("-A", NAMESPACED_KINDS), (CLUSTER_KINDS,)):
        out = json.loads(kubectl("get", *args, "-l", sel, "-o", "json").stdout)
        for o in out["items"]:
            ns = o["metadata"].get("namespace", "")
            found.add(f"{o['kind']}/{ns}/{o['metadata']['name']}")
    return found


def no_wildcards(role: dict[str, Any]) -> None:
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames",
                      "nonResourceURLs"):
            assert not any("*" in s for s in rule.get(field) or []), rule


# --- tests ----------------------------------------------------------------------------

@pytest.mark.parametrize("values", [
    {},
    {"watch.allNamespaces": "false", "replicaCount": "3", "priorityClasses.create": "true",
     "networkPolicy.enabled": "true", "serviceMonitor.enabled": "true",
     "networkPolicy.metricsFromNamespaceLabels.team": "monitoring"},
], ids=["defaults", "everything-on"])
def test_template_is_accepted_by_the_api_server(kubectl: Kubectl, namespace: str,
                                                values: dict[str, str]) -> None:
    values = dict(values)
    if values.get("watch.allNamespaces") == "false":
        values["watch.namespaces"] = f"{{{namespace}}}"
    rendered = subprocess.run(
        [str(HELM), "template", "dry", str(CHART), "-n", namespace, "--kube-version",
         KUBE_VERSION, "--include-crds", *set_args(values)],
        capture_output=True, text=True, check=True).stdout
    out = kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                  "-f", "-", input=rendered).stdout
    kinds = {line.split("/")[0].split(".")[0] for line in out.splitlines() if "/" in line}
    want = {"customresourcedefinition", "serviceaccount", "clusterrole",
            "clusterrolebinding", "role", "rolebinding", "service", "deployment"}
    if values:
        want |= {"priorityclass", "networkpolicy"}
    assert want <= kinds, out


def test_install_upgrade_uninstall_leave_no_orphans(kubectl: Kubectl,
                                                    release: Release) -> None:
    notes = release.install({})
    # NOTES.txt: how to apply an example and get the Clawdbot config
    assert "kind: ModelDeployment" in notes and "clawdbot-config" in notes
    assert "kubectl get modeldeployments" in notes
    fn, ns = release.fullname, release.namespace

    def get(kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        proc = kubectl(*args, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    for name in (fn, f"{fn}-cluster"):
        role = get("clusterrole", name)
        assert role is not None, name
        no_wildcards(role)
    assert get("clusterrolebinding", fn) is not None  # watch.allNamespaces (default)
    dep = get("deployment", fn, ns)
    assert dep and dep["status"].get("availableReplicas") == 1  # kwok runs the pod
    first = labelled(kubectl, release)
    assert f"ServiceAccount/{ns}/{fn}" in first and f"ClusterRole//{fn}" in first

    # Upgrade with changed values: watch one namespace, two replicas, a NetworkPolicy.
    release.upgrade({"watch.allNamespaces": "false", "watch.namespaces": f"{{{ns}}}",
                     "replicaCount": "2", "networkPolicy.enabled": "true",
                     "operator.resyncSeconds": "30"})
    assert get("clusterrolebinding", fn) is None, "cluster-wide binding left behind"
    rb = get("rolebinding", fn, ns)
    assert rb and rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                    "kind": "ClusterRole", "name": fn}
    dep = get("deployment", fn, ns)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={ns}" in args and "--leader-election" in args
    assert "--all-namespaces" not in args
    assert dep["spec"]["replicas"] == 2 and dep["status"].get("availableReplicas") == 2
    leases = [r for r in get("role", fn, ns)["rules"] if "leases" in r["resources"]]
    assert leases, "leader election needs the Lease rules"
    assert get("networkpolicy", fn, ns) is not None
    assert "namespaces" in json.dumps(get("clusterrole", f"{fn}-cluster")["rules"])
    second = labelled(kubectl, release)
    assert f"ClusterRoleBinding//{fn}" not in second

    # Uninstall: nothing with the release's label is left; the CRD stays by design.
    release.uninstall()
    wait_for(lambda: not labelled(kubectl, release), 60,
             what=f"no objects of release {release.name}")
    assert get("crd", "modeldeployments.modeldeploy.io") is not None
    wait_for(lambda: not json.loads(kubectl("get", "pods", "-n", ns, "-o", "json").stdout)[
        "items"], 60, what="operator pods garbage-collected")


def test_token_identity_is_the_chart_service_account(kubectl: Kubectl, release: Release,
                                                     tmp_path: Path) -> None:
    release.install({"watch.allNamespaces": "false",
                     "watch.namespaces": f"{{{release.namespace}}}", "replicaCount": "0"})
    cfg = token_kubeconfig(kubectl, release.fullname, release.namespace, tmp_path / "kc")

    def as_sa(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--kubeconfig", str(cfg), *args],
                              capture_output=True, text=True, timeout=60)

    who = json.loads(as_sa("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{release.namespace}:{release.fullname}")
    # Granted: what the operator uses. Refused: anything else.
    ns = release.namespace
    assert as_sa("auth", "can-i", "patch", "deployments.apps", "-n", ns).stdout.strip() == "yes"
    assert as_sa("auth", "can-i", "create", "secrets", "-n", ns).stdout.strip() == "yes"
    for verb, what, where in [("patch", "deployments.apps", "default"),  # not watched
                              ("create", "pods", ns), ("delete", "namespaces", ""),
                              ("get", "secrets", "kube-system"),
                              ("escalate", "clusterroles", ""), ("create", "secrets",
                                                                "default")]:
        args = ["auth", "can-i", verb, what] + (["-n", where] if where else [])
        assert as_sa(*args).stdout.strip() == "no", f"{verb} {what} in {where or 'cluster'}"


def test_a_missing_rule_fails(kubectl: Kubectl, namespace: str, kubeconfig: str,
                              run_operator: Callable[..., Any], tmp_path: Path) -> None:
    """The RBAC scenarios (test_chart_rbac.py) can fail: with the NetworkPolicy/Ingress
    rule removed from the installed ClusterRole, the operator (running with the chart's
    token, not the admin's) is refused and the ModelDeployment never gets Ready."""
    runner = ChartOperator(run_operator, kubectl, kubeconfig, namespace, tmp_path)
    runner.install()
    role_name = runner.release.fullname
    role = json.loads(kubectl("get", "clusterrole", role_name, "-o", "json").stdout)
    idx = next(i for i, r in enumerate(role["rules"])
               if r["apiGroups"] == ["networking.k8s.io"])
    kubectl("patch", "clusterrole", role_name, "--type=json",
            "-p", json.dumps([{"op": "remove", "path": f"/rules/{idx}"}]))
    try:
        op = runner("--namespace", namespace, "--operator-namespace", namespace,
                    "--resync-seconds", "2")
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "denied"},
            "spec": {"model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                     "resources": {"gpus": 0, "cpu": "100m", "memory": "128Mi"}}}))

        def refused() -> str | None:
            md = json.loads(kubectl("get", "md", "denied", "-n", namespace, "-o",
                                    "json").stdout)
            text = json.dumps(md.get("status") or {}) + op.log()
            return text if FORBIDDEN.search(text) else None

        wait_for(refused, 60, what="a Forbidden error for networking.k8s.io")
        md = json.loads(kubectl("get", "md", "denied", "-n", namespace, "-o", "json").stdout)
        assert (md.get("status") or {}).get("phase") != "Ready"
    finally:
        denied = runner.close()
    assert any("networkpolic" in line.lower() or "ingress" in line.lower()
               for line in denied), denied
