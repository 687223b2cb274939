"""The Prometheus exporter of ``/metrics``: models' and routers' live metrics, read at each scrape.

Kept in the server package because it needs ``prometheus_client`` (the ``server`` extra); the SDK's own
metrics (``edgeinfer.metrics``) need nothing beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..metrics import QUANTILES, WINDOW

Gauges = Callable[[], Mapping[str, Mapping[str, Any]]]  # per model label: SERVER_GAUGES keys -> values

SUMMARIES = (  # snapshot key, metric name, help
    ("ttft_s", "edgeinfer_time_to_first_token_seconds",
     "Request start (queueing included) to first token; quantiles over the last {window} requests."),
    ("decode_tok_s", "edgeinfer_decode_tokens_per_second",
     "Per-request decode speed (tokens after the first / seconds); quantiles over the last {window} "
     "requests."),
    ("total_s", "edgeinfer_request_duration_seconds",
     "Seconds of requests that ran to their end; quantiles over the last {window} requests."),
)
SERVER_GAUGES = (  # key in the ``gauges`` callback's dicts, metric name, help
    ("running", "edgeinfer_requests_running", "Requests the engine is decoding or prefilling now."),
    ("waiting", "edgeinfer_requests_waiting", "Requests queued in the engine for a free sequence."),
    ("admitted", "edgeinfer_requests_admitted", "Requests the server admitted (running or queued)."),
    ("capacity", "edgeinfer_requests_capacity", "Admitted requests the server holds before answering 503."),
)


def prometheus_registry(models: Mapping[str, Any], *, routers: Mapping[str, Any] | None = None,
                        gauges: Gauges | None = None, process: bool = True) -> CollectorRegistry:
    """A ``prometheus_client.CollectorRegistry`` of its own, read at each scrape (nothing is
    recorded twice): ``models`` by their ``model`` label (anything with ``.metrics``), ``routers``
    by their ``router`` label, ``gauges()`` giving per-model gauges (see SERVER_GAUGES), and, with
    ``process``, the process' memory and CPU. Render it with ``prometheus_client.generate_latest``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(models, routers or {}, gauges))
    if process:
        ProcessCollector(registry=registry)
    return registry


class _Collector:
    """Turns snapshots into metric families at each scrape, so nothing is counted twice."""

    def __init__(self, models: Mapping[str, Any], routers: Mapping[str, Any], gauges: Gauges | None) -> None:
        self.models, self.routers, self.gauges = models, routers, gauges

    def collect(self) -> Iterator[Metric]:
        """Every family: requests, tokens, cached share, summaries, then server gauges and routers."""
        snaps = {label: m.metrics.snapshot() for label, m in self.models.items()
                 if getattr(m, "metrics", None) is not None}
        requests = CounterMetricFamily("edgeinfer_requests", "Finished requests by finish reason.",
                                       labels=["model", "finish_reason"])
        counters = {key: CounterMetricFamily(name, text, labels=["model"]) for key, name, text in (
            ("prompt_tokens", "edgeinfer_prompt_tokens", "Prompt tokens of finished requests."),
            ("cached_tokens", "edgeinfer_cached_prompt_tokens",
             "Prompt tokens whose KV was reused from the cache instead of computed."),
            ("completion_tokens", "edgeinfer_completion_tokens", "Generated tokens."),
            ("draft_tokens", "edgeinfer_speculative_draft_tokens",
             "Speculative tokens proposed and checked."),
            ("accepted_tokens", "edgeinfer_speculative_accepted_tokens", "Speculative tokens accepted."),
        )}
        kv = GaugeMetricFamily("edgeinfer_kv_cache_bytes",
                               "KV cache bytes: in use (tokens held) and allocated.",
                               labels=["model", "state"])
        sequences = GaugeMetricFamily("edgeinfer_kv_sequences_allocated",
                                      "KV sequences allocated now (they are added as requests need them).",
                                      labels=["model"])
        share = GaugeMetricFamily("edgeinfer_cached_prompt_tokens_ratio",
                                  "Cached prompt tokens / prompt tokens since the start.", labels=["model"])
        window = next(iter(snaps.values()))["window"] if snaps else WINDOW
        summaries = {key: Metric(name, text.format(window=window), "summary")
                     for key, name, text in SUMMARIES}
        for label, snap in snaps.items():
            for reason, n in snap["finish_reasons"].items():
                requests.add_metric([label, reason], n)
            for key, family in counters.items():
                family.add_metric([label], snap[key])
            share.add_metric([label], snap["cached_share"])
            if "kv_bytes_in_use" in snap:
                kv.add_metric([label, "used"], snap["kv_bytes_in_use"])
                kv.add_metric([label, "allocated"], snap["kv_bytes_allocated"])
                sequences.add_metric([label], snap["sequences_allocated"])
            for key, family in summaries.items():
                values = snap[key]
                for q in QUANTILES:
                    value = values[f"p{round(q * 100)}"]
                    if value is not None:  # no quantile samples before the first observation
                        family.add_sample(family.name, {"model": label, "quantile": str(q)}, value)
                family.add_sample(family.name + "_sum", {"model": label}, values["sum"])
                family.add_sample(family.name + "_count", {"model": label}, values["count"])
        yield requests
        yield from counters.values()
        yield share
        yield kv
        yield sequences
        yield from summaries.values()
        if self.gauges is not None:
            server = {key: GaugeMetricFamily(name, text, labels=["model"])
                      for key, name, text in SERVER_GAUGES}
            for label, values in self.gauges().items():
                for key, family in server.items():
                    if values.get(key) is not None:
                        family.add_metric([label], values[key])
            yield from server.values()
        if self.routers:
            yield from _router_families({label: r.metrics_snapshot() for label, r in self.routers.items()})


def _router_families(snaps: Mapping[str, dict]) -> Iterator[Metric]:
    """Each router's per-tier requests, shares and costs, and its saving against the largest tier."""
    tier_requests = CounterMetricFamily("edgeinfer_router_requests", "Requests each tier served.",
                                        labels=["router", "tier"])
    tier_share = GaugeMetricFamily("edgeinfer_router_tier_share_ratio", "Share of requests each tier served.",
                                   labels=["router", "tier"])
    tier_cost = CounterMetricFamily("edgeinfer_router_tier_cost", "Estimated cost of each tier's requests.",
                                    labels=["router", "tier"])
    cost = CounterMetricFamily("edgeinfer_router_cost", "Estimated cost of all routed requests.",
                               labels=["router"])
    largest = CounterMetricFamily("edgeinfer_router_largest_tier_cost",
                                  "Estimated cost had every request gone to the largest tier.",
                                  labels=["router"])
    saved = GaugeMetricFamily("edgeinfer_router_saved_cost",
                              "Estimated cost saved against sending everything to the largest tier.",
                              labels=["router"])
    for label, snap in snaps.items():
        for tier, t in snap["tiers"].items():
            tier_requests.add_metric([label, tier], t["requests"])
            tier_share.add_metric([label, tier], t["share"])
            tier_cost.add_metric([label, tier], t["cost"])
        cost.add_metric([label], snap["cost"])
        largest.add_metric([label], snap["largest_tier_cost"])
        saved.add_metric([label], snap["saved"])
    yield from (tier_requests, tier_share, tier_cost, cost, largest, saved)
