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

from modeldeploy import leader
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

log = logging.getLogger(__name__)

_controller: Controller | None = None


def controller() -> Controller:
    assert _controller is not None, "operator not started"
    return _controller


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _controller
    # Events are posted by reconcile itself, only when a condition changes.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    client = AsyncClient(field_manager=FIELD_MANAGER)
    ctx = Context(kube=Kube(client), operator_namespace=CONFIG.operator_namespace)
    _controller = Controller(ctx, CONFIG)
    _controller.start()
    if CONFIG.leader_election:
        leader.start(ctx.kube, CONFIG, _controller.active)
    else:
        _controller.active.set()
    log.info("modeldeploy operator started (namespaces=%s, resync=%ss, operator namespace=%s)",
             "all" if CONFIG.all_namespaces else ",".join(CONFIG.namespaces),
             CONFIG.resync_seconds, CONFIG.operator_namespace)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _controller is not None:
        await _controller.stop()
    await leader.stop()


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
