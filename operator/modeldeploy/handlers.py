"""Thin kopf wiring: ModelDeployment watch events in, the controller's work queue does
the rest (children are watched by the controller's own informers, which also serve
reconcile's reads).

Only event-watching handlers are used (no kopf create/update/daemon handlers), so kopf
adds no finalizers and writes no annotations of its own: reconcile is the only writer,
and a converged resource sees no write at all.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from lightkube import AsyncClient

from modeldeploy import metrics
from modeldeploy.apihealth import API, EndlessBackoffs
from modeldeploy.config import CONFIG
from modeldeploy.constants import (
    FIELD_MANAGER,
    GROUP,
    PLURAL,
    VERSION,
)
from modeldeploy.context import Context
from modeldeploy.controller import Controller
from modeldeploy.kube import Kube
from modeldeploy.leader import Leadership

log = logging.getLogger(__name__)

_controller: Controller | None = None
_leadership: Leadership | None = None


def controller() -> Controller:
    assert _controller is not None, "operator not started"
    return _controller


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _controller, _leadership
    # Events are posted by reconcile itself, only when a condition changes.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Never escalate: an unreachable API server (even at start, during discovery) is
    # waited for, not a reason to exit.
    settings.networking.error_backoffs = EndlessBackoffs()
    client = AsyncClient(field_manager=FIELD_MANAGER)
    ctx = Context(kube=Kube(client), operator_namespace=CONFIG.operator_namespace,
                  priority_tier_namespaces=CONFIG.priority_tier_namespaces,
                  scraper_namespaces=CONFIG.scraper_namespaces,
                  pod_monitor_labels=CONFIG.pod_monitor_labels)
    _controller = Controller(ctx, CONFIG)
    _controller.start()
    if CONFIG.leader_election:
        _leadership = Leadership(ctx.kube, CONFIG, _controller.active)
        ctx.kube.may_write = _leadership.may_write
        _leadership.start()
    else:
        _controller.active.set()
        metrics.LEADER.set(1)
    log.info("modeldeploy operator started (namespaces=%s, resync=%ss, operator namespace=%s)",
             "all" if CONFIG.all_namespaces else ",".join(CONFIG.namespaces),
             CONFIG.resync_seconds, CONFIG.operator_namespace)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _controller is not None:
        await _controller.stop()
    if _leadership is not None:
        await _leadership.stop()


@kopf.on.probe(id="apiserver")
def apiserver(**_: Any) -> str:
    """Alive either way (the kubelet must not restart an operator that only waits), but
    /healthz says what it waits for."""
    return API.describe()


@kopf.on.probe(id="queue")
def queue_depth(**_: Any) -> int:
    return len(controller().queue) if _controller else 0


# Handlers are async so they run on the event loop: kopf runs sync ones in threads, and
# the work queue is not thread-safe.
@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_model_deployment(event: dict[str, Any], **_: Any) -> None:
    obj = event.get("object")
    if not obj:
        return
    controller().observe(obj, deleted=event.get("type") == "DELETED")
