"""The operator's in-memory view of its children, kept current by watches (informer.py).

Reconcile reads what exists from here instead of listing ten kinds from the API server
on every pass: at N resources that was most of the API server's load. Objects are
indexed by owner (the `app.kubernetes.io/name` label) so one lookup returns a
ModelDeployment's whole set. Pure: no I/O; informers and reconcile feed it.
"""

from __future__ import annotations

from typing import Any

from modeldeploy.constants import LABEL_NAME

Key = tuple[str, str, str]  # apiVersion, kind, name
Owner = tuple[str, str]     # namespace, owner name


def key_of(obj: dict[str, Any]) -> Key:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def _version(obj: dict[str, Any]) -> int | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return int(rv) if isinstance(rv, str) and rv.isdigit() else None


def newer(incoming: dict[str, Any], held: dict[str, Any] | None) -> bool:
    """Whether `incoming` supersedes `held`. An apply's answer and the watch event for the
    same write race; etcd's revisions are integers in practice, so the higher one wins
    (anything unparsable is taken as newer: the watch is the source of truth)."""
    if held is None:
        return True
    a, b = _version(incoming), _version(held)
    return a is None or b is None or a >= b


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop managedFields: large, and nothing the operator compares."""
    meta = obj.get("metadata") or {}
    if "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


class Children:
    def __init__(self) -> None:
        self._by_owner: dict[Owner, dict[Key, dict[str, Any]]] = {}

    @staticmethod
    def _owner(obj: dict[str, Any]) -> Owner | None:
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(LABEL_NAME)
        return (meta["namespace"], name) if name and meta.get("namespace") else None

    def put(self, obj: dict[str, Any]) -> Owner | None:
        """Record an object seen on a watch or returned by a write; its owner, if any."""
        owner = self._owner(obj)
        if owner is None:
            return None
        held = self._by_owner.setdefault(owner, {})
        key = key_of(obj)
        if newer(obj, held.get(key)):
            held[key] = _slim(obj)
        return owner

    def remove(self, obj: dict[str, Any]) -> Owner | None:
        owner = self._owner(obj)
        if owner is not None:
            self.forget(owner, key_of(obj))
        return owner

    def forget(self, owner: Owner, key: Key) -> None:
        held = self._by_owner.get(owner)
        if held is not None:
            held.pop(key, None)
            if not held:
                del self._by_owner[owner]

    def replace(self, api_version: str, kind: str, namespace: str | None,
                objs: list[dict[str, Any]]) -> set[Owner]:
        """A fresh listing of one kind (in one namespace, or all when None) replaces what
        was held for it: whatever vanished while a watch was down is dropped. Returns
        the owners whose set changed."""
        fresh: dict[Owner, dict[Key, dict[str, Any]]] = {}
        for obj in objs:
            owner = self._owner(obj)
            if owner is not None:
                fresh.setdefault(owner, {})[key_of(obj)] = _slim(obj)
        touched: set[Owner] = set()
        for owner in list(self._by_owner):
            if namespace is not None and owner[0] != namespace:
                continue
            held = self._by_owner[owner]
            stale = [k for k in held if k[:2] == (api_version, kind)
                     and k not in fresh.get(owner, {})]
            for k in stale:
                del held[k]
                touched.add(owner)
            if not held:
                del self._by_owner[owner]
        for owner, objs_by_key in fresh.items():
            held = self._by_owner.setdefault(owner, {})
            for k, obj in objs_by_key.items():
                if newer(obj, held.get(k)):
                    if held.get(k) != obj:
                        touched.add(owner)
                    held[k] = obj
        return touched

    def of(self, namespace: str, name: str, labels: dict[str, str]) -> dict[Key, dict[str, Any]]:
        """The children of one owner that carry all of `labels` (a copy: callers update it)."""
        out = {}
        for key, obj in self._by_owner.get((namespace, name), {}).items():
            have = obj["metadata"].get("labels") or {}
            if all(have.get(a) == b for a, b in labels.items()):
                out[key] = obj
        return out

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_owner.values())
