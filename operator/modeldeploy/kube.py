"""A small dict-in, dict-out Kubernetes client over lightkube, counting every write.

Manifests are sent as plain dicts (what the renderers produce) and answers come back as
dicts, so no code outside this module sees lightkube's models. Every mutating call increments
`modeldeploy_api_writes_total`, which the no-op-resync test reads.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import (
    GenericGlobalResource,
    GenericNamespacedResource,
    create_api_info,
    create_global_resource,
    create_namespaced_resource,
)
from lightkube.types import PatchType

from modeldeploy import metrics
from modeldeploy.constants import FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION

# Set by reconcile to count its own writes (workers run concurrently).
WRITES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("writes",
                                                                          default=None)


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS: list[Kind] = [
    Kind("apps", "v1", "Deployment", "deployments"),
    Kind("", "v1", "Service", "services"),
    Kind("", "v1", "Secret", "secrets"),
    Kind("", "v1", "ConfigMap", "configmaps"),
    Kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    Kind("", "v1", "Pod", "pods"),
    Kind("", "v1", "Event", "events"),
    Kind("networking.k8s.io", "v1", "Ingress", "ingresses"),
    Kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
    Kind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    Kind("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", namespaced=False),
    Kind("cert-manager.io", "v1", "Certificate", "certificates"),
    Kind("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors"),
    Kind("coordination.k8s.io", "v1", "Lease", "leases"),
    Kind(GROUP, VERSION, KIND, PLURAL),
]
_BY_KEY = {(k.api_version, k.kind): k for k in KINDS}


def kind_of(api_version: str, kind: str) -> Kind:
    return _BY_KEY[(api_version, kind)]


@functools.cache
def _resource(k: Kind) -> Any:
    # For the status subresource (lightkube builds it with the class): built-in kinds use
    # lightkube's own classes (registered once per process), CRD kinds generic ones.
    try:
        return resource_registry.load(k.api_version, k.kind)
    except Exception:  # noqa: BLE001 - lightkube raises a plain error for unknown kinds
        create = create_namespaced_resource if k.namespaced else create_global_resource
        return create(k.group, k.version, k.kind, k.plural)


@functools.cache
def _raw(k: Kind) -> Any:
    """A dict-backed resource class (not registered with lightkube): requests and watch
    events of thousands of children skip building and unbuilding lightkube's typed models."""
    base = GenericNamespacedResource if k.namespaced else GenericGlobalResource
    return type(f"Raw{k.kind}", (base,),
                {"_api_info": create_api_info(k.group, k.version, k.kind, k.plural)})


def _scope(k: Kind, namespace: str | None) -> dict[str, str]:
    """lightkube's namespace argument for a list or watch: None means every namespace."""
    if not k.namespaced:
        return {}
    return {"namespace": namespace if namespace is not None else "*"}


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of an API error (or of a bare HTTP error from a streamed list)."""
    code = getattr(getattr(exc, "status", None), "code", None)
    if code is None:
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code


def is_status(exc: BaseException, *codes: int) -> bool:
    """Whether an API error (or a bare HTTP error from a streamed list) has these codes."""
    return status_code(exc) in codes


def error_message(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return f"{getattr(exc.status, 'reason', '')}: {getattr(exc.status, 'message', exc)}"
    return str(exc)


def _plain(obj: Any, k: Kind) -> dict[str, Any]:
    d = dict(obj.to_dict())
    d.setdefault("apiVersion", k.api_version)
    d.setdefault("kind", k.kind)
    return d


class NotLeading(Exception):
    """A write refused before it was sent: this replica does not hold a fresh lease."""


class Kube:
    def __init__(self, client: AsyncClient,
                 may_write: Callable[[], bool] | None = None) -> None:
        self.client = client
        # The leader's fence (leader.py): checked before every write except the Lease's
        # own, which is how leadership is won. None: no leader election, always allowed.
        self.may_write = may_write

    def _write(self, verb: str, kind: str) -> None:
        if kind != "Lease" and self.may_write is not None and not self.may_write():
            raise NotLeading(f"{verb} of a {kind} not sent: this replica does not hold "
                             "a fresh leader lease")
        metrics.API_WRITES.labels(verb=verb, kind=kind).inc()
        counter = WRITES.get()
        if counter is not None:
            counter.append(kind)

    async def get(self, k: Kind, name: str, namespace: str | None = None) -> dict | None:
        try:
            obj = await self.client.get(_raw(k), name, namespace=namespace)
        except ApiError as exc:
            if is_status(exc, 404):
                return None
            raise
        return _plain(obj, k)

    async def list(self, k: Kind, namespace: str | None,
                   labels: dict[str, str] | None = None) -> list[dict]:
        kwargs: dict[str, Any] = {"labels": labels} if labels else {}
        return [_plain(o, k) async for o in self.client.list(_raw(k), **kwargs,
                                                              **_scope(k, namespace))]

    async def list_versioned(self, k: Kind, namespace: str | None,
                             labels: dict[str, str]) -> tuple[list[dict], str]:
        """A listing and the resourceVersion to watch from (informer.py)."""
        listing = self.client.list(_raw(k), labels=labels, **_scope(k, namespace))
        items = [_plain(o, k) async for o in listing]
        return items, listing.resourceVersion

    async def watch(self, k: Kind, namespace: str | None, labels: dict[str, str],
                    resource_version: str) -> AsyncIterator[tuple[str, dict]]:
        """Changes after `resource_version`; raises on any error (the caller lists again)."""
        async for event, obj in self.client.watch(_raw(k), labels=labels,
                                                  resource_version=resource_version,
                                                  **_scope(k, namespace)):
            yield event, _plain(obj, k)

    async def apply(self, obj: dict[str, Any]) -> dict:
        k = kind_of(obj["apiVersion"], obj["kind"])
        self._write("apply", k.kind)
        meta = obj["metadata"]
        res = await self.client.patch(
            _raw(k), meta["name"], obj, namespace=meta.get("namespace"),
            patch_type=PatchType.APPLY, field_manager=FIELD_MANAGER, force=True,
        )
        return dict(res.to_dict())

    async def create(self, obj: dict[str, Any]) -> dict:
        k = kind_of(obj["apiVersion"], obj["kind"])
        self._write("create", k.kind)
        res = await self.client.create(_raw(k)(obj),
                                       namespace=obj["metadata"].get("namespace"),
                                       field_manager=FIELD_MANAGER)
        return dict(res.to_dict())

    async def replace(self, obj: dict[str, Any]) -> dict:
        """PUT with the object's resourceVersion (optimistic concurrency)."""
        k = kind_of(obj["apiVersion"], obj["kind"])
        self._write("replace", k.kind)
        res = await self.client.replace(_raw(k)(obj),
                                        namespace=obj["metadata"].get("namespace"),
                                        field_manager=FIELD_MANAGER)
        return dict(res.to_dict())

    async def delete(self, k: Kind, name: str, namespace: str | None = None) -> None:
        self._write("delete", k.kind)
        try:
            await self.client.delete(_raw(k), name, namespace=namespace)
        except ApiError as exc:
            if not is_status(exc, 404):
                raise

    async def patch_status(self, k: Kind, name: str, namespace: str,
                           status: dict[str, Any]) -> None:
        self._write("patch_status", k.kind)
        await self.client.patch(
            _resource(k).Status, name, {"status": status}, namespace=namespace,
            patch_type=PatchType.MERGE, field_manager=FIELD_MANAGER,
        )
