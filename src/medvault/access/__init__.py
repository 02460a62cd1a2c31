"""Identities and the policy decision point. Deny by default."""

from medvault.access.policy import Action, Decision, Principal, decide

__all__ = ["Action", "Decision", "Principal", "decide"]
