"""The Deployment that runs the model server pods (the generic pod plan).

GPU requests, toleration and product affinity, priority class, Guaranteed QoS, probes,
/dev/shm, model source and cache, TLS and API key mounts, pod security. What an engine
needs (args, image, health path, how the model cache is filled, whether it listens on
loopback behind the gateway) comes from render.engines.plan(); nothing here knows which
engine it is. Whichever container serves network.port (the engine, or the gateway in front
of it) gets the port, the probes and the TLS and API key mounts.
"""

from __future__ import annotations

import copy
from typing import Any

from modeldeploy.constants import HOME_DIR, IMAGE_UID, PVC_MODELS_DIR
from modeldeploy.render import engines, gateway
from modeldeploy.render.engines.engine_plan import EnginePlan, FetchPlan
from modeldeploy.render.meta import metadata, pod_labels, selector_labels
from modeldeploy.render.server_features import feature_volumes
from modeldeploy.render.server_security import security_volumes
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


def _startup_failures(spec: Spec) -> int:
    # /health answers only once the model is loaded: the startup probe waits for the
    # slowest load (engine.startupTimeoutSeconds), the others then react within ~30 s.
    return max(1, -(-spec.engine.startup_timeout_seconds // PROBE_PERIOD))


def probes(spec: Spec, health_path: str) -> dict[str, Any]:
    return {
        "startupProbe": _probe(spec, health_path, _startup_failures(spec), PROBE_PERIOD),
        "readinessProbe": _probe(spec, health_path, 3, 5),
        "livenessProbe": _probe(spec, health_path, 3, 10),
    }


def gateway_probes(spec: Spec) -> dict[str, Any]:
    """The gateway's /health follows the engine's, which is right for startup and
    readiness; its liveness is its own (a TCP connect), or a hung engine would restart the
    gateway over and over and never the engine (engine_probes restarts that one)."""
    return {**probes(spec, gateway.HEALTH_PATH),
            "livenessProbe": {"tcpSocket": {"port": PORT_NAME}, "periodSeconds": 10,
                              "timeoutSeconds": 5, "failureThreshold": 3}}


def engine_health_command(port: int, path: str) -> list[str]:
    """An exec probe for an engine on loopback, where the kubelet's httpGet (which dials
    the pod IP) cannot reach. Bash builtins only (/dev/tcp, printf, read): the vLLM and TGI
    images are Ubuntu-based and have bash, but neither promises curl or wget."""
    script = (f"exec 3<>/dev/tcp/127.0.0.1/{port} && "
              f"printf 'GET {path} HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && "
              "read -r -t 4 proto status rest <&3 && [ \"$status\" = 200 ]")
    return ["bash", "-c", script]


def engine_probes(spec: Spec, port: int, path: str) -> dict[str, Any]:
    """Startup and liveness of the engine behind the gateway, so a hung engine is the
    container the kubelet restarts. No readiness: the gateway's carries it."""
    def exec_probe(failures: int) -> dict[str, Any]:
        return {"exec": {"command": engine_health_command(port, path)},
                "periodSeconds": PROBE_PERIOD, "timeoutSeconds": 5,
                "failureThreshold": failures}
    return {"startupProbe": exec_probe(_startup_failures(spec)),
            "livenessProbe": exec_probe(3)}


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


def _container(name: str, image: str, command: list[str] | None, args: list[str],
               env: list[dict[str, Any]], res: dict[str, Any], security: dict[str, Any],
               mounts: list[dict[str, Any]]) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        "args": args,
        "env": [{"name": "HOME", "value": HOME_DIR}, *env],
        "resources": res,
        "securityContext": security,
        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
        # Endpoints drop a terminating pod asynchronously: keep serving a few seconds
        # after the pod is told to stop, so a roll refuses no new connection. An engine
        # behind the gateway pauses too, or requests in flight through it would die.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "volumeMounts": copy.deepcopy(mounts),
    }
    if command:
        c["command"] = command
    return c


def serving_volumes(spec: Spec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Secrets the serving container's flags name: TLS and API keys, the Redis
    password, the overflow upstream's key and CA."""
    sec_vols, sec_mounts = security_volumes(spec)
    feat_vols, feat_mounts = feature_volumes(spec)
    return [*sec_vols, *feat_vols], [*sec_mounts, *feat_mounts]


def serving(spec: Spec, c: dict[str, Any], container_probes: dict[str, Any]) -> dict[str, Any]:
    """The container that serves network.port: it gets the port, the probes (the Service
    and the kubelet reach it there) and the Secret mounts its flags name."""
    return {**c,
            "ports": [{"name": PORT_NAME, "containerPort": spec.network.port,
                       "protocol": "TCP"}],
            "volumeMounts": [*c["volumeMounts"], *serving_volumes(spec)[1]],
            **container_probes}


def containers(spec: Spec, plan: EnginePlan, mounts: list[dict[str, Any]],
               ) -> list[dict[str, Any]]:
    """The engine (first, named `server`) and, for an engine on loopback, the gateway."""
    engine = _container(CONTAINER, plan.image, plan.command, plan.args, plan.env,
                        resources(spec), container_security(plan.run_as_user), mounts)
    if plan.upstream_port is None:
        return [serving(spec, engine, probes(spec, plan.health_path))]
    # The gateway runs as the pod's image user whatever the engine needs (TGI: root), and
    # mounts only what it writes to: no model, no /dev/shm. The engine, on loopback, gets
    # no port; its exec probes make the kubelet restart it (not the gateway) when it hangs.
    gateway_mounts = [m for m in mounts if m["name"] in ("tmp", "home")]
    front = _container(gateway.CONTAINER, gateway.IMAGE, gateway.COMMAND,
                       gateway.args(spec, plan.upstream_port), [], gateway.resources(),
                       container_security(), gateway_mounts)
    engine = {**engine, **engine_probes(spec, plan.upstream_port, plan.health_path)}
    return [engine, serving(spec, front, gateway_probes(spec))]


def render(spec: Spec) -> dict[str, Any]:
    plan = engines.plan(spec)
    vols, mounts = volumes_and_mounts(spec)
    vols += serving_volumes(spec)[0]
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
        "containers": containers(spec, plan, mounts),
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
