"""Routing: send each request to the smallest model that can serve it, and measure how well it does."""

from .costs import LocalCost, TokenPrice
from .learned import LabelledPrompt, Learned, RouteClassifier, TrainedRouter, read_labelled, train_router
from .policies import Always, Cascade, Decision, Policy, RouteRequest, Rule, Rules, calibrate_threshold
from .router import Router, RouterStats, Tier, TierTotals

__all__ = [
    "Always",
    "Cascade",
    "Decision",
    "LabelledPrompt",
    "Learned",
    "LocalCost",
    "Policy",
    "RouteClassifier",
    "RouteRequest",
    "Router",
    "RouterStats",
    "Rule",
    "Rules",
    "Tier",
    "TierTotals",
    "TokenPrice",
    "TrainedRouter",
    "calibrate_threshold",
    "read_labelled",
    "train_router",
]
