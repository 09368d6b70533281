"""Builders shared by the operator's unit tests."""

from __future__ import annotations

import copy
from typing import Any

from modeldeploy.render.facts import Inputs
from modeldeploy.spec import Spec, parse

BASE: dict[str, Any] = {"model": {"source": "hf://org/model", "contextWindow": 32768}}


def make_spec(overrides: dict[str, Any] | None = None, name: str = "m",
              namespace: str = "ns") -> Spec:
    spec = copy.deepcopy(BASE)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return parse(name, namespace, "uid-1", spec)


def inputs(**kw: Any) -> Inputs:
    from modeldeploy.pki import KeyPair

    base: dict[str, Any] = dict(
        operator_namespace="modeldeploy-system", api_keys=["k1"],
        tls_leaf=KeyPair("CERT", "KEY"), tls_not_after="2027-01-01T00:00:00Z",
        ca_cert_pem="CA")
    base.update(kw)
    return Inputs(**base)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def arg_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]
