"""What a completion cost, per tier: local tiers by measured seconds, remote ones by tokens."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequestError
from ..stats import Stats


@dataclass(frozen=True)
class LocalCost:
    """A local model: ``per_hour`` (e.g. the device's energy and wear, or a cloud VM's price) times the
    seconds the completion took."""

    per_hour: float = 0.05

    def __post_init__(self) -> None:
        if not self.per_hour >= 0:
            raise InvalidRequestError(f"per_hour must be >= 0, got {self.per_hour}")

    def cost(self, stats: Stats) -> float:
        return stats.total_s * self.per_hour / 3600.0


@dataclass(frozen=True)
class TokenPrice:
    """A hosted model: a price per million input and per million output tokens."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        if not (self.input_per_million >= 0 and self.output_per_million >= 0):
            raise InvalidRequestError("token prices must be >= 0")

    def cost(self, stats: Stats) -> float:
        return (stats.prompt_tokens * self.input_per_million
                + stats.completion_tokens * self.output_per_million) / 1e6
