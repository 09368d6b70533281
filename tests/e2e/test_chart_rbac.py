"""RBAC proven, not assumed: the operator's reconcile scenarios with the chart's
ServiceAccount.

For each test here, `helm install` puts the chart into the test's namespace, a token for
the chart's ServiceAccount is minted with the TokenRequest API (`kubectl create token`),
and the operator runs as a local process with a kubeconfig holding only that token. The
operator's own scenarios (imported from tests/e2e/test_operator_*.py) run unchanged: a
rule the operator needs and the chart lacks fails them, and so does any request the API
server refused on the side (a watch, an Event), found in the operator's log. That these
can fail is shown by test_chart_install.py::test_a_missing_rule_fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_helpers import crd  # noqa: F401 - fixture used by the imported scenarios
from test_chart_install import ChartOperator

# Bound in this module, so pytest collects them here as well and gives them this
# module's run_operator (below) instead of conftest's.
from test_operator_behaviour import (  # noqa: F401
    test_drift_is_undone_within_seconds,
    test_priority_class_shared_and_cleaned_up,
    test_unschedulable_message_in_condition_and_event,
    test_update_rolls_pods_and_removal_prunes_children,
)
from test_operator_children import (  # noqa: F401
    test_full_set_of_children,
    test_tls_modes_report_what_is_missing,
    test_vllm_and_model_cache,
)
from test_operator_ha import (  # noqa: F401
    test_health_and_metrics_endpoints,
    test_leader_election_and_failover,
)
from test_operator_tiers_metrics import (  # noqa: F401
    podmonitor_crd,
    test_pod_monitor_and_the_scraper_namespace,
)

pytestmark = pytest.mark.e2e
Kubectl = Callable[..., subprocess.CompletedProcess[str]]

# Scenarios run with the chart's cluster-wide binding (watch.allNamespaces: true); the
# others with watch.namespaces = [the test namespace] (RoleBindings there).
CLUSTER_WIDE = {"test_priority_class_shared_and_cleaned_up"}
# Chart values a scenario needs beyond the defaults: the Lease rules come with leader
# election (on by itself when replicaCount > 1; the operator runs here, so forced on).
VALUES = {"test_leader_election_and_failover": {"leaderElection.enabled": "true"}}


@pytest.fixture
def run_operator(run_operator: Callable[..., Any], kubectl: Kubectl, kubeconfig: str,
                 namespace: str, tmp_path: Path,
                 request: pytest.FixtureRequest) -> Iterator[ChartOperator]:
    """Overrides conftest's run_operator: same call, the chart's credentials."""
    runner = ChartOperator(run_operator, kubectl, kubeconfig, namespace, tmp_path,
                           cluster_wide=request.node.originalname in CLUSTER_WIDE,
                           extra_values=VALUES.get(request.node.originalname))
    yield runner
    denied = runner.close()
    assert not denied, "the API server refused the operator:\n" + "\n".join(denied[:20])
