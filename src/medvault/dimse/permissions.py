"""Which DIMSE operation a registered node may perform. Pure; deny by default.

A small function over the node's permission set, so the lead can route it through the policy
decision point (``medvault.access.policy``) later without changing the DIMSE layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from medvault.index.nodes import Node

__all__ = ["DimseOperation", "NodeDecision", "decide_node"]


class DimseOperation(StrEnum):
    ECHO = "echo"
    STORE = "store"
    FIND = "find"
    GET = "get"
    MOVE = "move"


# Operation -> the permission it needs; ECHO needs none beyond being an active node.
_REQUIRED: dict[DimseOperation, str | None] = {
    DimseOperation.ECHO: None,
    DimseOperation.STORE: "store",
    DimseOperation.FIND: "find",
    DimseOperation.GET: "get",
    DimseOperation.MOVE: "move",
}


@dataclass(frozen=True)
class NodeDecision:
    allowed: bool
    reason: str


def decide_node(node: Node | None, operation: DimseOperation, *, now: datetime) -> NodeDecision:
    """Allow ``operation`` only for a known, unrevoked, unexpired node holding its permission."""
    if node is None:
        return NodeDecision(False, "unknown node")
    if node.revoked:
        return NodeDecision(False, f"node {node.name} is revoked")
    if node.suspended:
        return NodeDecision(False, f"node {node.name} is suspended after a security alert")
    if node.expired(now):
        return NodeDecision(False, f"node {node.name}'s certificate has expired")
    if operation not in _REQUIRED:
        return NodeDecision(False, f"operation {operation} is not a DIMSE operation medvault serves")
    needed = _REQUIRED[operation]
    if needed is None:
        return NodeDecision(True, f"node {node.name} is active")
    if needed in node.permissions:
        return NodeDecision(True, f"node {node.name} holds {needed}")
    return NodeDecision(False, f"node {node.name} does not hold {needed}")
