"""Per-completion statistics, filled by the engine so nobody has to re-measure by hand."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Stats:
    """What one completion cost. Times are seconds; rates are tokens per second."""

    model: str = ""
    backend: str = ""
    device: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused instead of computed
    cache_source: str = ""  # where they came from: "ram", "ram-copy", "disk" or "none"
    completion_tokens: int = 0
    ttft_s: float = 0.0  # request start -> first token sampled
    prefill_s: float = 0.0
    decode_s: float = 0.0  # first token -> last token
    total_s: float = 0.0
    finish_reason: str = ""
    draft_tokens: int = 0  # speculative tokens proposed and checked
    accepted_tokens: int = 0  # of those, the ones the model agreed with (emitted without own step)
    forced_tokens: int = 0  # tokens the output constraint allowed alone: appended without a sampling step
    route: str = ""
    threads: int = 0  # compute threads the backend ran with when the request ended (0: not known)
    kv_bytes: int = 0  # KV cache bytes the request's sequence held when it ended (0: not known)

    @property
    def computed_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def prefill_tok_s(self) -> float:
        return self.computed_prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        steps = self.completion_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            computed_prompt_tokens=self.computed_prompt_tokens,
            prefill_tok_s=round(self.prefill_tok_s, 2),
            decode_tok_s=round(self.decode_tok_s, 2),
        )
        for key in ("ttft_s", "prefill_s", "decode_s", "total_s"):
            d[key] = round(d[key], 4)
        return d
