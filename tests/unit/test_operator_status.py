"""status: phase and conditions from observed Deployment and pods."""

from __future__ import annotations

from typing import Any

import pytest
from helpers_operator import make_spec
from modeldeploy import status
from modeldeploy.status import Cond, Observed

pytestmark = pytest.mark.unit


def dep(replicas: int = 1, ready: int = 0, updated: int | None = None) -> dict[str, Any]:
    return {"metadata": {"generation": 2}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": 2, "readyReplicas": ready,
                       "updatedReplicas": replicas if updated is None else updated}}


def pod(name: str = "p", scheduled: str = "True", message: str = "",
        containers: list[dict[str, Any]] | None = None,
        inits: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    cond = {"type": "PodScheduled", "status": scheduled, "message": message}
    if scheduled == "False":
        cond["reason"] = "Unschedulable"
    return {"metadata": {"name": name}, "status": {
        "conditions": [cond], "containerStatuses": containers or [],
        "initContainerStatuses": inits or []}}


def conds(spec: Any, obs: Observed) -> dict[str, Cond]:
    _, cs, _ = status.compute(spec, obs)
    return {c.type: c for c in cs}


def test_ready() -> None:
    spec = make_spec()
    phase, cs, fields = status.compute(spec, Observed(2, dep(1, 1), [pod()], []))
    assert phase == "Ready"
    assert fields["ready"] == "1/1" and fields["endpoint"] == "m.ns.svc:8080"
    assert fields["url"] == "https://m.ns.svc:8080/v1"
    assert fields["apiKeySecret"] == "m-api-keys" and fields["tlsSecret"] == "m-tls"
    assert {c.type: c.status for c in cs}["Ready"] == "True"


def test_unschedulable_surfaces_the_scheduler_message() -> None:
    msg = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    obs = Observed(2, dep(1, 0), [pod(scheduled="False", message=msg)], [])
    phase, _, _ = status.compute(make_spec(), obs)
    c = conds(make_spec(), obs)
    assert phase == "Pending"
    assert c["Scheduled"].status == "False" and c["Scheduled"].reason == "Unschedulable"
    assert msg in c["Scheduled"].message and msg in c["Ready"].message


def test_oom_killed_crash_loop_is_failed_with_reason() -> None:
    cs = [{"name": "server", "restartCount": 4,
           "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
           "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]
    obs = Observed(2, dep(1, 0), [pod(containers=cs)], [])
    phase, _, _ = status.compute(make_spec(), obs)
    h = conds(make_spec(), obs)["Healthy"]
    assert phase == "Failed" and h.status == "False" and h.reason == "OOMKilled"
    assert "exit code 137" in h.message and "restarts 4" in h.message


def test_a_log_tail_as_termination_message_is_cut_to_its_last_lines() -> None:
    """FallbackToLogsOnError puts up to 80 log lines (progress bars included) in the
    message: the condition keeps the last three, as a terminal would show them."""
    tail = "\n".join([f"INFO line {i}" for i in range(80)]
                     + ["\rLoading:  10%\rLoading: 100%", "Traceback: boom", ""])
    cs = [{"name": "server", "restartCount": 2,
           "state": {"waiting": {"reason": "CrashLoopBackOff"}},
           "lastState": {"terminated": {"reason": "Error", "exitCode": 1, "message": tail}}}]
    h = conds(make_spec(), Observed(2, dep(1, 0), [pod(containers=cs)], []))["Healthy"]
    assert "INFO line 79 | Loading: 100% | Traceback: boom" in h.message
    assert "line 78" not in h.message and "\r" not in h.message


def test_a_killed_server_that_restarted_names_the_signal() -> None:
    """kill -9 of the server: the container runs again, its last termination says how it
    died and the restart count goes up, while the replica serves again."""
    cs = [{"name": "server", "restartCount": 1, "ready": True,
           "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}},
           "lastState": {"terminated": {"reason": "Error", "exitCode": 137}}}]
    obs = Observed(2, dep(1, 1), [pod(containers=cs)], [])
    phase, _, _ = status.compute(make_spec(), obs)
    h = conds(make_spec(), obs)["Healthy"]
    assert phase == "Ready"
    assert h.status == "False" and h.reason == "Error"
    assert "killed by SIGKILL" in h.message and "restarts 1" in h.message


def test_checksum_failure_in_fetch_is_reported() -> None:
    inits = [{"name": "fetch-model", "state": {"terminated": {
        "exitCode": 1, "reason": "Error", "message": "checksum mismatch for model.bin"}}}]
    obs = Observed(2, dep(1, 0), [pod(inits=inits)], [])
    phase, _, _ = status.compute(make_spec(), obs)
    m = conds(make_spec(), obs)["ModelReady"]
    assert phase == "Failed" and m.reason == "ModelFetchFailed"
    assert "checksum mismatch" in m.message


def test_downloading_is_pending() -> None:
    inits = [{"name": "fetch-model", "state": {"running": {}}}]
    obs = Observed(2, dep(1, 0), [pod(inits=inits)], [])
    assert status.compute(make_spec(), obs)[0] == "Pending"
    assert conds(make_spec(), obs)["ModelReady"].reason == "Downloading"


def test_degraded_and_progressing() -> None:
    msg = "0/3 nodes are available"
    obs = Observed(2, dep(2, 1), [pod(), pod("q", "False", msg)], [])
    assert status.compute(make_spec(), obs)[0] == "Degraded"
    obs = Observed(2, dep(2, 1, updated=1), [pod(), pod("q")], [])
    assert status.compute(make_spec(), obs)[0] == "Progressing"


def test_apply_failure_is_failed() -> None:
    problem = Cond("Reconciled", "False", "ApplyFailed", "Deployment m: invalid")
    obs = Observed(2, None, [], [problem])
    assert status.compute(make_spec(), obs)[0] == "Failed"
    assert conds(make_spec(), obs)["Reconciled"].message == "Deployment m: invalid"


def test_transition_time_kept_and_warnings_only_on_change() -> None:
    spec = make_spec()
    msg = "0/3 nodes are available"
    obs = Observed(2, dep(1, 0), [pod(scheduled="False", message=msg)], [])
    first = status.build(spec, obs, {}, "2026-01-01T00:00:00Z")
    assert [w["type"] for w in status.new_warnings({}, first)] == ["Scheduled"]
    second = status.build(spec, obs, first, "2026-01-01T00:05:00Z")
    assert second == first  # no change, so no status write
    assert status.new_warnings(first, second) == []
    assert status.merge_patch(first, second) is None


def test_merge_patch_clears_removed_fields() -> None:
    assert status.merge_patch({"a": 1, "b": 2}, {"a": 1}) == {"a": 1, "b": None}


def test_clawdbot_condition() -> None:
    spec = make_spec({"model": {"source": "hf://o/m", "contextWindow": 8192}})
    c = conds(spec, Observed(1, dep(1, 1), [pod()], []))["ClawdbotCompatible"]
    assert c.status == "False" and c.reason == "ContextWindowTooSmall"


def test_autoscaler_condition_reports_why_it_cannot_scale() -> None:
    spec = make_spec({"autoscaling": {"maxReplicas": 3}})
    hpa = {"status": {"conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
         "message": "unable to get metric modelserver_inflight_requests: no metrics API"}]}}
    c = conds(spec, Observed(1, dep(1, 1), [pod()], [], hpa=hpa))["AutoscalerReady"]
    assert (c.status, c.reason) == ("False", "FailedGetPodsMetric")
    assert "modelserver_inflight_requests" in c.message
    assert status.compute(spec, Observed(1, dep(1, 1), [pod()], [], hpa=hpa))[0] == "Ready"
    assert "AutoscalerReady" not in conds(make_spec(), Observed(1, dep(1, 1), [pod()], []))
