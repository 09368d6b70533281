"""Versions pinned in hack/*/go.mod (the single source) and the paths of the binaries
hack/build.sh makes from them, for tests that call those binaries."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def go_mod_version(module_dir: str, module: str) -> str:
    """The version of `module` required by hack/<module_dir>/go.mod."""
    text = (ROOT / "hack" / module_dir / "go.mod").read_text()
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.M)
    assert m, f"{module} not required in hack/{module_dir}/go.mod"
    return m.group(1)


KUBE_VERSION = go_mod_version("kube", "k8s.io/kubernetes")
HELM = ROOT / ".cache" / "bin" / f"helm-{go_mod_version('helm', 'helm.sh/helm/v3')}" / "helm"
