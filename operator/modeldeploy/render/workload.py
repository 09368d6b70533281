"""The Deployment that runs the model server pods (the generic pod plan).

GPU requests, toleration and product affinity, priority class, Guaranteed QoS, probes,
/dev/shm, model source and cache, TLS and API key mounts, pod security. What an engine
needs (args, image, health path, how the model cache is filled) comes from
render.engines.plan(); nothing here knows which engine it is.
"""

from __future__ import annotations

import copy
from typing import Any

from modeldeploy.constants import (
    AUTH_DIR,
    HOME_DIR,
    IMAGE_UID,
    PVC_MODELS_DIR,
    TLS_DIR,
)
from modeldeploy.render import engines
from modeldeploy.render.engines.engine_plan import FetchPlan
from modeldeploy.render.meta import metadata, pod_labels, selector_labels
from modeldeploy.spec import Spec

CONTAINER = "server"
PORT_NAME = "api"
PROBE_PERIOD = 10
# The server writes why it stopped to /dev/termination-log; an engine that does not (or a
# crash before it can) still gets the tail of its log into the pod's status.
TERMINATION_MESSAGE_POLICY = "FallbackToLogsOnError"
PRE_STOP_SECONDS = 5


def resources(spec: Spec) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, Any] = {"cpu": r.cpu, "memory": r.memory}
    limits: dict[str, Any] = {"memory": r.memory}
    if spec.qos.guaranteed:
        # Guaranteed QoS needs limits == requests for cpu and memory in every container.
        limits["cpu"] = r.cpu
    if r.gpus > 0:
        # Extended resources: requests must equal limits.
        requests[r.gpu_resource] = str(r.gpus)
        limits[r.gpu_resource] = str(r.gpus)
    return {"requests": requests, "limits": limits}


def tolerations(spec: Spec) -> list[dict[str, Any]]:
    tols = [copy.deepcopy(dict(t)) for t in spec.placement.tolerations]
    if spec.resources.gpus > 0:
        gpu_tol = {"key": spec.resources.gpu_resource, "operator": "Exists",
                   "effect": "NoSchedule"}
        if gpu_tol not in tols:
            tols.append(gpu_tol)
    return tols


def affinity(spec: Spec) -> dict[str, Any]:
    aff = copy.deepcopy(spec.placement.affinity)
    product = spec.resources.gpu_product
    if not product:
        return aff
    expr = {"key": spec.resources.gpu_product_label, "operator": "In", "values": [product]}
    node_aff = aff.setdefault("nodeAffinity", {})
    required = node_aff.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({"matchExpressions": [expr]})
    else:
        # Terms are ORed: the product must hold in each of them.
        for term in terms:
            term.setdefault("matchExpressions", []).append(expr)
    return aff


def strategy(spec: Spec) -> dict[str, Any]:
    if spec.resources.gpus > 0:
        # A surge pod would need GPUs that a full node does not have: replace in place.
        return {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def _probe(spec: Spec, path: str, failure_threshold: int, period: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME, "scheme": spec.scheme.upper()},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


def probes(spec: Spec, health_path: str) -> dict[str, Any]:
    # /health answers only once the model is loaded: the startup probe waits for the
    # slowest load (engine.startupTimeoutSeconds), the others then react within ~30 s.
    startup_failures = max(1, -(-spec.engine.startup_timeout_seconds // PROBE_PERIOD))
    return {
        "startupProbe": _probe(spec, health_path, startup_failures, PROBE_PERIOD),
        "readinessProbe": _probe(spec, health_path, 3, 5),
        "livenessProbe": _probe(spec, health_path, 3, 10),
    }


def container_security(run_as_user: int | None = None) -> dict[str, Any]:
    """Locked down; `run_as_user` (an engine's EnginePlan.run_as_user) overrides the pod's
    non-root user for this container only, with no privilege escalation, no capabilities
    and the read-only root filesystem kept."""
    sc: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if run_as_user is not None:
        sc["runAsUser"] = run_as_user
        sc["runAsNonRoot"] = run_as_user != 0
    return sc


def volumes_and_mounts(spec: Spec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    vols: list[dict[str, Any]] = [
        {"name": "shm",
         "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shared_memory}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": HOME_DIR},
    ]
    if spec.model.cache is not None:
        vols.append({"name": "model-cache",
                     "persistentVolumeClaim": {"claimName": spec.cache_claim_name}})
    else:
        vols.append({"name": "model-cache", "emptyDir": {}})
    mounts.append({"name": "model-cache", "mountPath": spec.cache_dir})
    if spec.model.pvc_claim:
        vols.append({"name": "model-source", "persistentVolumeClaim": {
            "claimName": spec.model.pvc_claim, "readOnly": True}})
        mounts.append({"name": "model-source",
                       "mountPath": f"{PVC_MODELS_DIR}/{spec.model.pvc_claim}", "readOnly": True})
    if spec.tls.enabled:
        # No subPath: kubelet then refreshes renewed certificates in place.
        vols.append({"name": "tls", "secret": {"secretName": spec.tls_secret_name,
                                               "defaultMode": 0o440}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if spec.auth.enabled:
        vols.append({"name": "api-keys", "secret": {"secretName": spec.api_key_secret_name,
                                                    "defaultMode": 0o440}})
        mounts.append({"name": "api-keys", "mountPath": AUTH_DIR, "readOnly": True})
    return vols, mounts


def init_containers(spec: Spec, fetch: FetchPlan | None) -> list[dict[str, Any]]:
    if fetch is None:
        return []
    return [{
        "name": "fetch-model",
        "image": fetch.image,
        "command": fetch.command,
        "args": fetch.args,
        "env": [{"name": "HOME", "value": HOME_DIR}],
        "resources": {"requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
                      "limits": {"cpu": spec.resources.cpu, "memory": spec.resources.memory}},
        "securityContext": container_security(),
        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
        "volumeMounts": [{"name": "model-cache", "mountPath": spec.cache_dir},
                         {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "home", "mountPath": HOME_DIR}],
    }]


def render(spec: Spec) -> dict[str, Any]:
    plan = engines.plan(spec)
    vols, mounts = volumes_and_mounts(spec)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": plan.image,
        "args": plan.args,
        "ports": [{"name": PORT_NAME, "containerPort": spec.network.port, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": HOME_DIR}, *plan.env],
        "resources": resources(spec),
        "securityContext": container_security(plan.run_as_user),
        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
        # Endpoints drop a terminating pod asynchronously: keep serving a few seconds
        # after the pod is told to stop, so a roll refuses no new connection.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "volumeMounts": mounts,
        **probes(spec, plan.health_path),
    }
    if plan.command:
        container["command"] = plan.command
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "priorityClassName": spec.qos.priority_class_name,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": vols,
    }
    inits = init_containers(spec, plan.fetch)
    if inits:
        pod["initContainers"] = inits
    if spec.placement.node_selector:
        pod["nodeSelector"] = dict(spec.placement.node_selector)
    tols = tolerations(spec)
    if tols:
        pod["tolerations"] = tols
    aff = affinity(spec)
    if aff:
        pod["affinity"] = aff
    deploy_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(spec)},
        "strategy": strategy(spec),
        "revisionHistoryLimit": 3,
        "template": {"metadata": {"labels": pod_labels(spec)}, "spec": pod},
    }
    if spec.autoscaling is None:
        # With autoscaling the HPA owns .spec.replicas; applying it would fight the HPA.
        deploy_spec["replicas"] = spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(spec, spec.name),
        "spec": deploy_spec,
    }
