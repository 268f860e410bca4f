"""A small NetworkPolicy evaluator, to check which connections the rendered policies allow.

Semantics of networking.k8s.io/v1 (Kubernetes docs, "Network Policies"): a connection is allowed
when the source pod's egress and the destination pod's ingress both allow it. A direction is open
for a pod that no policy selects for that direction; once selected, some rule must match the peer
and the port. A peer with only podSelector means pods of the policy's namespace; only
namespaceSelector, every pod of the matching namespaces; both, their intersection. An ipBlock is
taken to match only addresses outside the cluster (what it is meant for; CNIs differ on pod IPs).
Namespaces are matched by their automatic `kubernetes.io/metadata.name` label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from k8s_render import selector_matches


@dataclass(frozen=True)
class Endpoint:
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    external: bool = False  # an address outside the cluster (git host, object storage)

    def __hash__(self) -> int:
        return hash((self.namespace, tuple(sorted(self.labels.items())), self.external))


def allowed(policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether `policies` let `src` open a connection to `dst` on `port`."""
    return _direction(policies, src, dst, port, protocol, "Egress") and _direction(
        policies, dst, src, port, protocol, "Ingress"
    )


def _direction(policies, pod: Endpoint, peer: Endpoint, port: int, protocol: str, kind: str) -> bool:
    if pod.external:
        return True
    selecting = [p for p in policies if _selects(p, pod) and kind in _types(p)]
    if not selecting:
        return True
    rules_key, peers_key = ("egress", "to") if kind == "Egress" else ("ingress", "from")
    for policy in selecting:
        for rule in policy["spec"].get(rules_key, []):
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(policy, p, peer) for p in peers)
            ports = rule.get("ports")
            port_ok = not ports or any(_port_matches(p, port, protocol) for p in ports)
            if peer_ok and port_ok:
                return True
    return False


def _types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])


def _selects(policy: dict[str, Any], pod: Endpoint) -> bool:
    return policy["metadata"]["namespace"] == pod.namespace and selector_matches(
        policy["spec"]["podSelector"], pod.labels
    )


def _peer_matches(policy: dict[str, Any], peer_rule: dict[str, Any], peer: Endpoint) -> bool:
    if "ipBlock" in peer_rule:
        return peer.external
    if peer.external:
        return False
    ns_sel, pod_sel = peer_rule.get("namespaceSelector"), peer_rule.get("podSelector")
    if ns_sel is None:
        ns_ok = peer.namespace == policy["metadata"]["namespace"]
    else:
        ns_ok = selector_matches(ns_sel, {"kubernetes.io/metadata.name": peer.namespace})
    return ns_ok and (pod_sel is None or selector_matches(pod_sel, peer.labels))


def _port_matches(rule: dict[str, Any], port: int, protocol: str) -> bool:
    if rule.get("protocol", "TCP") != protocol:
        return False
    if "port" not in rule:
        return True
    return rule["port"] <= port <= rule.get("endPort", rule["port"])
