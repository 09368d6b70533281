"""Which namespaces may use each priority tier: the cluster admin's rule (chart value
`priorityTiers.<tier>.namespaces`, operator flag --priority-tier-namespaces).

Pure. A tier left out of the rule stays open to every namespace (today's behaviour); a
tier with a list is refused everywhere else, so a team cannot ask for `critical` and
preempt other teams' pods cluster-wide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from modeldeploy.constants import PRIORITY_TIERS

FLAG = "--priority-tier-namespaces"
# What a refused ModelDeployment does not get: everything that makes or selects pods. The
# rest (API keys, certificate, Service, model cache) stays, so allowing the tier (or
# choosing another) brings the same endpoint back with the same keys.
WITHHELD_KINDS = frozenset({"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                            "PodMonitor"})
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

TierNamespaces = Mapping[str, tuple[str, ...]]  # tier -> the namespaces that may use it


def is_namespace_name(name: str) -> bool:
    return bool(_DNS_LABEL.match(name))


def parse_flag(values: list[str]) -> dict[str, tuple[str, ...]]:
    """`TIER=NS[,NS...]` items (the flag is repeatable) → {tier: namespaces}; ValueError
    naming the flag and the bad part."""
    rules: dict[str, tuple[str, ...]] = {}
    for item in values:
        tier, sep, names = item.partition("=")
        if not sep:
            raise ValueError(f"{FLAG} {item!r}: expected TIER=NAMESPACE[,NAMESPACE...]")
        if tier not in PRIORITY_TIERS:
            raise ValueError(f"{FLAG} {item!r}: unknown tier {tier!r} (one of "
                             f"{', '.join(PRIORITY_TIERS)})")
        if tier in rules:
            raise ValueError(f"{FLAG}: tier {tier} given twice")
        namespaces = tuple(n.strip() for n in names.split(",") if n.strip())
        if not namespaces:
            # An empty list would lock the tier for everyone: say so rather than guess.
            raise ValueError(f"{FLAG} {item!r}: name at least one namespace (leave the "
                             "tier out to allow it in every namespace)")
        bad = [n for n in namespaces if not is_namespace_name(n)]
        if bad:
            raise ValueError(f"{FLAG} {item!r}: {bad[0]!r} is not a namespace name")
        rules[tier] = namespaces
    return rules


def refusal(tier: str, namespace: str, rules: TierNamespaces) -> str | None:
    """None when `namespace` may use `tier`; else why not, and where the rule is set."""
    allowed = rules.get(tier)
    if allowed is None or namespace in allowed:
        return None
    return (f"qos.priority {tier} is not allowed in namespace {namespace}: the cluster "
            f"admin allows it only in {', '.join(allowed)} (Helm value "
            f"priorityTiers.{tier}.namespaces, operator flag {FLAG}); choose another "
            "qos.priority or ask for this namespace to be added")
