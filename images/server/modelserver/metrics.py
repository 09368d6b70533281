"""Prometheus metrics: TGI's names (existing dashboards work) plus the two gauges the
operator's autoscaler reads, `modelserver_inflight_requests` and
`modelserver_queue_depth`. One registry per app, so tests can run several servers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_DURATION = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


class CacheMetrics(Protocol):
    """What the answer cache counts (cache.py), in `serve`'s metrics or the gateway's."""

    cache_hits: Counter
    cache_misses: Counter


class OverflowMetrics(Protocol):
    """What overflow counts (overflow.py), in `serve`'s metrics or the gateway's."""

    overflowed: Counter
    rejected: Counter


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # TGI names. TGI exports these counters without the `_total` suffix that
        # prometheus_client's Counter always adds; monotonic Gauges keep the exact names
        # (rate() works on them the same), so existing TGI dashboards keep working.
        self.request_count = Gauge("tgi_request_count", "Requests received", registry=r)
        self.request_success = Gauge("tgi_request_success", "Successful requests",
                                     registry=r)
        self.request_failure = Gauge("tgi_request_failure", "Failed requests", ["err"],
                                     registry=r)
        self.queue_size = Gauge("tgi_queue_size", "Requests waiting for a batch slot",
                                registry=r)
        self.batch_current_size = Gauge("tgi_batch_current_size", "Requests in the batch",
                                        registry=r)
        self.request_duration = Histogram("tgi_request_duration", "End-to-end seconds",
                                          buckets=_DURATION, registry=r)
        self.queue_duration = Histogram("tgi_request_queue_duration", "Seconds queued",
                                        buckets=_DURATION, registry=r)
        self.inference_duration = Histogram("tgi_request_inference_duration",
                                            "Seconds from batch entry to the last token",
                                            buckets=_DURATION, registry=r)
        self.mean_time_per_token = Histogram("tgi_request_mean_time_per_token_duration",
                                             "Mean seconds per generated token",
                                             buckets=_DURATION, registry=r)
        self.generated_tokens = Histogram("tgi_request_generated_tokens",
                                          "Generated tokens per request", buckets=_TOKENS,
                                          registry=r)
        self.input_length = Histogram("tgi_request_input_length", "Prompt tokens per request",
                                      buckets=_TOKENS, registry=r)
        # ours. The batch size limit is a count of requests: TGI's
        # `tgi_batch_current_max_tokens` is a token budget, so it gets a name of its own.
        self.batch_max_size = Gauge("modelserver_batch_max_size",
                                    "Most requests decoded together (--max-batch-size)",
                                    registry=r)
        self.inflight = Gauge("modelserver_inflight_requests",
                              "Requests admitted and not yet finished (queued + running)",
                              registry=r)
        self.queue_depth = Gauge("modelserver_queue_depth",
                                 "Requests admitted and waiting for a batch slot", registry=r)
        self.rejected = Counter("modelserver_rejected_total", "Requests answered 429",
                                registry=r)
        self.overflowed = Counter("modelserver_overflow_total",
                                  "Requests forwarded to the overflow upstream", ["result"],
                                  registry=r)
        self.cache_hits = Counter("modelserver_response_cache_hits_total",
                                  "Responses served from the Redis cache", registry=r)
        self.cache_misses = Counter("modelserver_response_cache_misses_total",
                                    "Cacheable requests not found in the Redis cache",
                                    registry=r)
        self.prefix_cached_tokens = Counter("modelserver_prefix_cache_tokens_total",
                                            "Prompt tokens reused from the prefix cache",
                                            registry=r)
        self.generated_tokens_total = Counter("modelserver_generated_tokens_total",
                                              "Tokens generated", registry=r)
        self.decode_steps = Gauge("modelserver_decode_steps_total",
                                  "Batched decode steps run", registry=r)
        self.decode_rows = Gauge("modelserver_decode_rows_total",
                                 "Sum of batch sizes over decode steps (÷ steps = mean batch)",
                                 registry=r)
        self.kv_budget = Gauge("modelserver_kv_budget_bytes",
                               "KV cache budget decided at start (--kv-cache-memory): "
                               "running batch + prefix cache", registry=r)
        self.prefix_cache_budget = Gauge("modelserver_prefix_cache_budget_bytes",
                                         "The prefix cache's share of the KV budget "
                                         "(--prefix-cache-memory)", registry=r)
        self.kv_cache_bytes = Gauge("modelserver_kv_cache_bytes",
                                    "KV cache bytes allocated now, by part (batch, prefix)",
                                    ["part"], registry=r)
        self.ready = Gauge("modelserver_ready", "1 once the model is loaded and warm",
                           registry=r)
        self._collect_hooks: list[Callable[[], None]] = []

    def on_collect(self, hook: Callable[[], None]) -> None:
        self._collect_hooks.append(hook)

    def render(self) -> bytes:
        for hook in self._collect_hooks:
            hook()
        return generate_latest(self.registry)


class GatewayMetrics:
    """`modelserver gateway`'s own metrics, all named modelserver_gateway_*: they cannot
    collide with the engine's (vllm:*, tgi_*, modelserver_*), appended after them on
    /metrics. The attribute names the cache and overflow use are those of Metrics."""

    PREFIX = "modelserver_gateway_"

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = self.PREFIX
        self.requests = Counter(p + "requests_total", "Requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.inflight = Gauge(p + "inflight_requests",
                              "Requests admitted and not yet answered in full", registry=r)
        self.upstream_errors = Counter(p + "upstream_errors_total",
                                       "Upstream engine failures, by kind", ["kind"],
                                       registry=r)
        self.rejected = Counter(p + "rejected_total", "Requests answered 429", registry=r)
        self.overflowed = Counter(p + "overflow_total",
                                  "Requests forwarded to the overflow upstream", ["result"],
                                  registry=r)
        self.cache_hits = Counter(p + "response_cache_hits_total",
                                  "Responses served from the Redis cache", registry=r)
        self.cache_misses = Counter(p + "response_cache_misses_total",
                                    "Cacheable requests not found in the Redis cache",
                                    registry=r)
        self.duration = Histogram(p + "request_duration_seconds",
                                  "Seconds until the response's headers, by route",
                                  ["route"], buckets=_DURATION, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
