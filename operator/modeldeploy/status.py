"""Observed children → status: phase, conditions users can act on, endpoint, names.

Pure: takes what reconcile read (Deployment, pods) and the problems it met, returns the
new status dict. Conditions keep their lastTransitionTime while their status holds.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from modeldeploy import memory_estimate, quantity
from modeldeploy.memory_estimate import Check, Estimate
from modeldeploy.render import clawdbot
from modeldeploy.spec import Spec

# Conditions whose turn to False deserves a Warning Event on the ModelDeployment.
EVENT_CONDITIONS = ("Scheduled", "Healthy", "ModelReady", "Reconciled", "TLSReady",
                    "MemoryFits", "PriorityAllowed")
CRASH_REASONS = {"CrashLoopBackOff", "OOMKilled", "Error", "ContainerCannotRun",
                 "CreateContainerError", "CreateContainerConfigError", "ImagePullBackOff",
                 "ErrImagePull", "InvalidImageName", "RunContainerError"}


@dataclass(frozen=True)
class Cond:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    generation: int
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]]
    problems: list[Cond]  # from reconcile: apply errors, TLS, ...
    hpa: dict[str, Any] | None = None


def _pod_condition(pod: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def scheduled(pods: list[dict[str, Any]]) -> Cond:
    if not pods:
        return Cond("Scheduled", "Unknown", "NoPods", "no pods exist yet")
    for pod in pods:
        c = _pod_condition(pod, "PodScheduled")
        if c and c.get("status") == "False":
            # kube-scheduler's own words, e.g. "0/3 nodes are available: ...".
            return Cond("Scheduled", "False", c.get("reason") or "Unschedulable",
                        f"pod {pod['metadata']['name']}: {c.get('message', '')}".strip())
    if all((_pod_condition(p, "PodScheduled") or {}).get("status") == "True" for p in pods):
        return Cond("Scheduled", "True", "Scheduled", f"{len(pods)} pod(s) bound to nodes")
    return Cond("Scheduled", "Unknown", "Pending", "waiting for kube-scheduler")


def _termination(cs: dict[str, Any]) -> dict[str, Any] | None:
    state = cs.get("state") or {}
    last = cs.get("lastState") or {}
    return state.get("terminated") or last.get("terminated")


def _exit(term: dict[str, Any]) -> str:
    """'Error (exit code 1)', 'OOMKilled (exit code 137)', 'Error (killed by SIGKILL)'."""
    code = term.get("exitCode")
    reason = term.get("reason", "Error")
    if isinstance(code, int) and 128 < code < 128 + 65 and reason != "OOMKilled":
        try:
            return f"{reason} (killed by {signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"{reason} (exit code {code})"


def _last_words(message: str, lines: int = 3, limit: int = 600) -> str:
    """The end of a termination message. With FallbackToLogsOnError it may be a log tail
    (up to 80 lines, progress bars redrawn with carriage returns): keep what a person
    reads last on a terminal, the final few lines."""
    shown = [line.rsplit("\r", 1)[-1].strip() for line in message.split("\n")]
    text = " | ".join([line for line in shown if line][-lines:])
    return text if len(text) <= limit else "…" + text[-limit:]


def healthy(pods: list[dict[str, Any]]) -> Cond:
    """Crash loops, OOM kills and image problems, with the container's own message."""
    for pod in pods:
        st = pod.get("status") or {}
        for cs in st.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            term = _termination(cs)
            reason = waiting.get("reason")
            if reason in CRASH_REASONS or (term and term.get("exitCode", 0) != 0):
                detail = []
                if term:
                    detail.append(f"last terminated: {_exit(term)}")
                    if term.get("message"):
                        detail.append(_last_words(term["message"]))
                if waiting.get("message"):
                    detail.append(waiting["message"].strip())
                why = (term or {}).get("reason") if reason in (None, "CrashLoopBackOff") \
                    and term else reason
                return Cond("Healthy", "False", why or reason or "Error",
                            f"pod {pod['metadata']['name']} container {cs.get('name')}: "
                            f"{reason or 'restarted'}; restarts {cs.get('restartCount', 0)}; "
                            + "; ".join(detail))
    return Cond("Healthy", "True", "NoCrashes", "no container is crashing")


def model_ready(spec: Spec, pods: list[dict[str, Any]], ready: int) -> Cond:
    for pod in pods:
        for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
            state = cs.get("state") or {}
            term = _termination(cs)
            if term and term.get("exitCode", 0) != 0:
                return Cond("ModelReady", "False", "ModelFetchFailed",
                            f"pod {pod['metadata']['name']}: fetching the model failed "
                            f"({_exit(term)}): {_last_words(term.get('message') or '')}")
            if "running" in state or ((state.get("waiting") or {}).get("reason")
                                      == "PodInitializing"):
                return Cond("ModelReady", "False", "Downloading",
                            f"pod {pod['metadata']['name']}: downloading {spec.model.source} "
                            "into the model cache")
    if ready > 0:
        return Cond("ModelReady", "True", "Loaded", f"{spec.model.source} is being served")
    return Cond("ModelReady", "Unknown", "Loading", "no replica has loaded the model yet")


def autoscaler(hpa: dict[str, Any] | None) -> Cond:
    """The HPA's own account of why it cannot scale (e.g. no metrics API / adapter)."""
    if hpa is None:
        return Cond("AutoscalerReady", "Unknown", "Pending", "the autoscaler has not "
                    "reported yet")
    for c in (hpa.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("AbleToScale", "ScalingActive") and c.get("status") == "False":
            return Cond("AutoscalerReady", "False", c.get("reason") or "ScalingInactive",
                        c.get("message") or "")
    if (hpa.get("status") or {}).get("conditions"):
        return Cond("AutoscalerReady", "True", "ScalingActive",
                    "the autoscaler can read its metric and scale")
    return Cond("AutoscalerReady", "Unknown", "Pending", "the autoscaler has not reported "
                "yet")


def _problem(problems: list[Cond], type_: str) -> Cond | None:
    return next((p for p in problems if p.type == type_), None)


@dataclass(frozen=True)
class Replicas:
    """What the Deployment reports: wanted and ready counts, and whether it has rolled."""

    desired: int
    ready: int
    rolled: bool


def replicas(spec: Spec, deployment: dict[str, Any] | None) -> Replicas:
    dep = deployment or {}
    dep_status = dep.get("status") or {}
    # Until a Deployment reports its replicas, count what the spec asks for.
    desired = (dep.get("spec") or {}).get("replicas", spec.desired_replicas)
    updated = int(dep_status.get("updatedReplicas") or 0)
    # Rolled: the controller has seen the latest template and replaced every pod.
    rolled = (dep_status.get("observedGeneration", 0) >= (dep.get("metadata") or {})
              .get("generation", 0)) and updated >= desired
    return Replicas(desired, int(dep_status.get("readyReplicas") or 0), rolled)


def live_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods not being deleted: a terminating pod's state says nothing about the new ones."""
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]


def reconciled(problems: list[Cond]) -> Cond:
    return _problem(problems, "Reconciled") or Cond(
        "Reconciled", "True", "Applied", "all children are up to date")


def tls_ready(spec: Spec, problems: list[Cond]) -> Cond:
    problem = _problem(problems, "TLSReady")
    if problem:
        return problem
    if not spec.tls.enabled:
        return Cond("TLSReady", "False", "Disabled", "TLS is disabled")
    return Cond("TLSReady", "True", "Issued" if spec.tls.mode == "operator" else "Configured",
                f"serving TLS {spec.tls.min_version}+ with Secret {spec.tls_secret_name}")


def priority_allowed(spec: Spec, problems: list[Cond]) -> Cond:
    """Whether this namespace may use the tier (reconcile's tierpolicy refusal, if any)."""
    return _problem(problems, "PriorityAllowed") or Cond(
        "PriorityAllowed", "True", "TierAllowed",
        f"qos.priority {spec.qos.priority} is allowed in namespace {spec.namespace}")


def available(r: Replicas) -> Cond:
    return Cond("Available",
                "True" if r.ready >= max(r.desired, 1) or r.desired == 0 else "False",
                "MinimumReplicasAvailable" if r.ready >= r.desired else "ReplicasNotReady",
                f"{r.ready}/{r.desired} replicas ready")


def phase_of(r: Replicas, recon: Cond, health: Cond, model: Cond, sched: Cond) -> str:
    """The one-word summary; the first matching rule wins, worst first."""
    if recon.status == "False":
        return "Failed" if r.ready == 0 else "Degraded"
    if r.ready == 0 and r.desired > 0 and (health.status == "False"
                                           or model.reason == "ModelFetchFailed"):
        return "Failed"
    if r.ready >= r.desired and r.rolled:
        return "Ready"
    if r.ready > 0 and (health.status == "False" or sched.status == "False"):
        return "Degraded"
    if r.ready == 0 and (sched.status != "True" or model.reason == "Downloading"):
        return "Pending"
    return "Progressing"


def ready_condition(spec: Spec, phase: str, r: Replicas, causes: list[Cond]) -> Cond:
    """Ready, or why not: the message of the first False condition in `causes`."""
    if phase == "Ready":
        return Cond("Ready", "True", "Ready", f"{r.ready}/{r.desired} replicas serving "
                    f"{spec.model.served_name} at {spec.base_url}")
    worst = next((c for c in causes if c.status == "False"), None)
    return Cond("Ready", "False", phase,
                worst.message if worst else f"{r.ready}/{r.desired} replicas ready")


def clawdbot_compatible(spec: Spec) -> Cond:
    ok, why = clawdbot.compatible(spec)
    return Cond("ClawdbotCompatible", "True" if ok else "False",
                "ContextWindowOK" if ok else "ContextWindowTooSmall", why)


def _breakdown(spec: Spec, est: Estimate) -> str:
    """'80B parameters as bfloat16: 149Gi of weights + 9Gi overhead + …'."""
    q = quantity.binary
    text = (f"{memory_estimate.parameter_label(est.parameters)} parameters as "
            f"{est.weight_format}: {q(est.weights)} of weights + {q(est.overhead)} overhead")
    if est.kv_per_sequence is None:
        return text + " (KV cache not counted: set spec.model.kvCacheBytesPerToken)"
    return (text + f" + {q(est.kv_per_sequence)} of KV cache per "
            f"{est.tokens_per_sequence}-token sequence, {est.sequences} at a full batch")


def memory_fits(spec: Spec, est: Estimate | None) -> Cond | None:
    """Whether the declared memory can hold the estimate; None without parameters.
    False only when it is more than memory_estimate.MARGIN short of the minimum (the
    weights, the overhead and one full-window sequence)."""
    if est is None:
        return None
    q = quantity.binary
    checks = memory_estimate.checks(spec, est)
    per_replica = " per replica" + (f" ({spec.resources.gpus} GPUs together)"
                                    if spec.resources.gpus > 1 else "")
    for c in checks:
        if c.too_small:
            return Cond("MemoryFits", "False", _too_small_reason(c),
                        _too_small_message(spec, est, c, per_replica))
    model = checks[0]
    if model.declared is None:
        return Cond("MemoryFits", "Unknown", "GpuMemoryNotDeclared",
                    f"the model needs at least {q(est.minimum)} of GPU memory{per_replica} "
                    f"({q(est.total)} at a full batch; {_breakdown(spec, est)}); set "
                    f"{model.field} to have it checked")
    declared = f"{model.field} {model.declared_text}"
    if model.full_batch_fits:
        return Cond("MemoryFits", "True", "Fits",
                    f"{declared} holds the {q(est.total)} the model needs{per_replica} at a "
                    f"full batch ({_breakdown(spec, est)})")
    fit = est.sequences_in(model.declared)
    then = ("the engine batches that many" if spec.engine.kind
            in memory_estimate.PREALLOCATING_ENGINES else
            "a full batch of long requests may run out of memory")
    return Cond("MemoryFits", "True", "FitsFewerSequences",
                f"{declared} holds the model and about {fit} of {est.sequences} sequences "
                f"at the full window ({then}); a full batch needs {q(est.total)} "
                f"({_breakdown(spec, est)}): raise {model.field} or lower "
                "engine.maxBatchSize")


def _too_small_reason(c: Check) -> str:
    return "PodMemoryTooSmall" if c.what == "pod memory for loading" else "ModelTooLarge"


def _too_small_message(spec: Spec, est: Estimate, c: Check, per_replica: str) -> str:
    q = quantity.binary
    if c.what == "pod memory for loading":
        return (f"loading the weights onto the GPUs needs about {q(c.minimum)} of pod "
                f"memory, but {c.field} is {c.declared_text}: raise {c.field}")
    fix = f"raise {c.field}" + (" (and resources.gpus)" if spec.resources.gpus else "")
    if spec.engine.quantization == "none":
        fix += " or quantize the weights (engine.quantization)"
    return (f"the model needs at least {q(c.minimum)} of {c.what}{per_replica} "
            f"({_breakdown(spec, est)}), but {c.field} is {c.declared_text}: {fix}")


def status_fields(spec: Spec, obs: Observed, phase: str, r: Replicas) -> dict[str, Any]:
    """The plain (non-condition) status fields; None means "leave the field out"."""
    return {
        "phase": phase,
        "observedGeneration": obs.generation,
        "replicas": r.desired,
        "readyReplicas": r.ready,
        "ready": f"{r.ready}/{r.desired}",
        "endpoint": spec.endpoint,
        "url": spec.base_url,
        "apiKeySecret": spec.api_key_secret_name if spec.auth.enabled else None,
        "tlsSecret": spec.tls_secret_name if spec.tls.enabled else None,
        "clawdbotConfigMap": spec.clawdbot_configmap_name if spec.clawdbot.enabled else None,
        "gpuMemory": spec.resources.gpu_memory,
        "memory": (memory_estimate.as_status(spec, est)
                   if (est := memory_estimate.estimate(spec)) else None),
    }


def compute(spec: Spec, obs: Observed) -> tuple[str, list[Cond], dict[str, Any]]:
    """(phase, conditions, plain fields) for the observed state."""
    r = replicas(spec, obs.deployment)
    pods = live_pods(obs.pods)
    sched = scheduled(pods)
    health = healthy(pods)
    model = model_ready(spec, pods, r.ready)
    recon = reconciled(obs.problems)
    tls = tls_ready(spec, obs.problems)
    avail = available(r)
    memory = memory_fits(spec, memory_estimate.estimate(spec))
    prio = priority_allowed(spec, obs.problems)
    phase = phase_of(r, recon, health, model, sched)
    # Ready's message names the first failing cause, in this order of importance. A model
    # too large for its memory comes before the crash it will cause (an OOMKilled pod).
    ready = ready_condition(spec, phase, r, [recon, *([memory] if memory else []), health,
                                             model, sched, tls, avail])
    if prio.status == "False":
        # Refused outright: no pod is made until the tier or the rule changes.
        phase = "Failed"
        ready = Cond("Ready", "False", prio.reason, prio.message)
    conds = [ready, sched, avail, health, model, tls, recon, prio]
    if memory is not None:
        conds.append(memory)
    if spec.autoscaling is not None:
        conds.append(autoscaler(obs.hpa))
    if spec.clawdbot.enabled:
        conds.append(clawdbot_compatible(spec))
    return phase, conds, status_fields(spec, obs, phase, r)


def build(spec: Spec, obs: Observed, old: dict[str, Any], now: str) -> dict[str, Any]:
    """The full status dict; unchanged conditions keep their lastTransitionTime."""
    _, conds, fields = compute(spec, obs)
    old_conds = {c.get("type"): c for c in old.get("conditions") or []}
    out: list[dict[str, Any]] = []
    for c in conds:
        prev = old_conds.get(c.type) or {}
        ltt = prev.get("lastTransitionTime") if prev.get("status") == c.status else None
        out.append({"type": c.type, "status": c.status, "reason": c.reason,
                    "message": c.message, "lastTransitionTime": ltt or now,
                    "observedGeneration": obs.generation})
    return {**{k: v for k, v in fields.items() if v is not None}, "conditions": out}


def new_warnings(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Conditions that just became False (or changed reason/message while False)."""
    old_conds = {c.get("type"): c for c in old.get("conditions") or []}
    warnings = []
    for c in new.get("conditions") or []:
        if c["type"] not in EVENT_CONDITIONS or c["status"] != "False":
            continue
        if c["type"] == "TLSReady" and c["reason"] == "Disabled":
            continue
        prev = old_conds.get(c["type"]) or {}
        if (prev.get("status"), prev.get("reason"), prev.get("message")) != (
                c["status"], c["reason"], c["message"]):
            warnings.append(c)
    return warnings


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning `old` into `new` (null clears a field), or None."""
    if old == new:
        return None
    patch = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch

