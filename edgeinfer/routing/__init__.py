"""Routing: send each request to the smallest model that can serve it, and measure how well it does."""

from .costs import LocalCost, TokenPrice
from .policies import Always, Cascade, Decision, Policy, RouteRequest, Rule, Rules, calibrate_threshold
from .router import Router, RouterStats, Tier, TierTotals

__all__ = [
    "Always",
    "Cascade",
    "Decision",
    "LocalCost",
    "Policy",
    "RouteRequest",
    "Router",
    "RouterStats",
    "Rule",
    "Rules",
    "Tier",
    "TierTotals",
    "TokenPrice",
    "calibrate_threshold",
]
