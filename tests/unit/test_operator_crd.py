"""The CRD: crds/ equals `modeldeploy crd`, and the schema holds the promised rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from modeldeploy.crd import crd, crd_yaml

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modeldeploy.io_modeldeployments.yaml"


def spec_props() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]


def test_crds_dir_matches_generator() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "run: modeldeploy crd > " + str(CRD_FILE)


def test_cli_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "modeldeploy", "crd"], capture_output=True,
                         text=True, check=True).stdout
    assert yaml.safe_load(out)["metadata"]["name"] == "modeldeployments.modeldeploy.io"


def test_names_columns_and_status() -> None:
    c = crd()
    assert c["spec"]["group"] == "modeldeploy.io" and c["spec"]["scope"] == "Namespaced"
    assert "md" in c["spec"]["names"]["shortNames"]
    v = c["spec"]["versions"][0]
    assert v["name"] == "v1alpha1" and v["subresources"] == {"status": {}}
    cols = [col["name"] for col in v["additionalPrinterColumns"]]
    assert cols[:3] == ["Phase", "Ready", "Endpoint"] and cols[-1] == "Age"


def walk(schema: dict[str, Any], path: str = "spec"):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def test_every_field_is_documented() -> None:
    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    undocumented = [p for p, s in walk(root) if "description" not in s
                    and "[]" not in p and not p.startswith("spec.engine.env")
                    and not p.startswith("spec.placement.tolerations")
                    and not p.startswith("spec.network.allowFrom.podSelector")]
    assert undocumented == []


def test_rules_promised_by_the_issue() -> None:
    p = spec_props()
    assert p["resources"]["properties"]["gpus"]["minimum"] == 0
    assert p["network"]["properties"]["port"]["maximum"] == 65535
    assert p["defaults"]["properties"]["temperature"]["maximum"] == 2
    assert p["defaults"]["properties"]["topP"]["exclusiveMinimum"] is True
    assert p["engine"]["properties"]["maxBatchSize"]["minimum"] == 1
    rules = json.dumps(crd())
    for fragment in ["minReplicas <= self.maxReplicas", "isCIDR", "has(self.secretName)",
                     "has(self.issuerRef)", "hf://", "pvc://", "quantization in ['none', 'int8']"]:
        assert fragment in rules, fragment
    # every CEL rule's message starts with the path of a real spec field
    n = 0
    for _, s in walk(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
        for r in s.get("x-kubernetes-validations", []):
            # the name rule sits at the root, where only metadata.name is visible
            node: dict[str, Any] = {"properties": {**p, "metadata": {"properties": {
                "name": {}}}}}
            for part in r["message"].split()[0].rstrip(":").split("."):
                node = node["properties"][part]
            n += 1
    assert n >= 12


def test_render_cli_prints_every_child_of_an_example(capsys: pytest.CaptureFixture) -> None:
    from modeldeploy.cli import main

    assert main(["render", "-f", str(ROOT / "examples" / "autoscaled-ingress.yaml")]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Secret", "Secret", "Deployment", "Service", "Ingress",
                            "NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                            "ConfigMap"])
