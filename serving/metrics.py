"""The server's Prometheus metrics (`GET /monitoring/prometheus/metrics`, the
path TF Serving serves its own at), through prometheus_client.

  mae_tfx_responses_total{status}                REST responses by HTTP status
  mae_tfx_request_seconds{route,signature}       REST request latency (histogram)
  mae_tfx_model_calls_total                      model calls (instances per call > 1: batching)
  mae_tfx_model_instances_total                  instances run through the model
  mae_tfx_queued_instances                       instances waiting for a model call
  mae_tfx_shed_requests_total                    requests refused with a 503 (REST and gRPC)
  mae_tfx_model_load_seconds{version}            how long each loaded version took to load
  mae_tfx_model_size_bytes{version}              its SavedModel on disk (the index left out)
  mae_tfx_index_vectors{version}                 vectors in its search index
  mae_tfx_index_size_bytes{version}              its search index on disk

The counters the batcher and the model store keep are read when scraped
(`_Live`), so REST and gRPC count in the same place.
"""

import os
from typing import Iterator, Optional

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# From a cached compiled call (~3 ms) to a batch of large images on 2 cores.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# One series per counter, not a `_created` twin of each.
prometheus_client.disable_created_metrics()


def folder_bytes(path: str, leave_out: Optional[str] = None) -> int:
  """The size of the files under `path`, without its top-level `leave_out`."""
  total = 0
  for folder, dirs, files in os.walk(path):
    if folder == path and leave_out in dirs:
      dirs.remove(leave_out)
    total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
  return total


class _Live(Collector):
  """The batcher's counters and the loaded versions, read at scrape time."""

  def __init__(self, batcher, store):
    self.batcher, self.store = batcher, store

  def collect(self) -> Iterator:
    """Yields each metric family with its value now."""
    b = self.batcher
    yield CounterMetricFamily("mae_tfx_model_calls", "Model calls made", value=b.calls)
    yield CounterMetricFamily(
        "mae_tfx_model_instances", "Instances run through the model", value=b.instances
    )
    yield GaugeMetricFamily(
        "mae_tfx_queued_instances", "Instances waiting for a model call", value=b.queued
    )
    yield CounterMetricFamily(
        "mae_tfx_shed_requests", "Requests refused with 503 (overloaded)", value=b.shed
    )
    families = {
        "load": GaugeMetricFamily(
            "mae_tfx_model_load_seconds", "Time to load the version", labels=["version"]
        ),
        "size": GaugeMetricFamily(
            "mae_tfx_model_size_bytes", "The version's SavedModel on disk", labels=["version"]
        ),
        "vectors": GaugeMetricFamily(
            "mae_tfx_index_vectors", "Vectors in the version's search index", labels=["version"]
        ),
        "index_size": GaugeMetricFamily(
            "mae_tfx_index_size_bytes", "The version's search index on disk", labels=["version"]
        ),
    }
    for model in self.store.loaded_models():
      version = [str(model.version)]
      families["load"].add_metric(version, model.load_seconds)
      families["size"].add_metric(version, model.size_bytes)
      if model.index is not None:
        families["vectors"].add_metric(version, len(model.index))
        families["index_size"].add_metric(version, model.index_size_bytes)
    yield from families.values()


class ServerMetrics:
  """The registry a server exposes: response and latency metrics it
  observes, and `_Live` over its batcher and model store."""

  def __init__(self, batcher, store):
    self.registry = CollectorRegistry()
    self.responses = Counter(
        "mae_tfx_responses", "REST responses by HTTP status", ["status"], registry=self.registry
    )
    self.latency = Histogram(
        "mae_tfx_request_seconds",
        "REST request latency by route and signature",
        ["route", "signature"],
        buckets=LATENCY_BUCKETS,
        registry=self.registry,
    )
    self.registry.register(_Live(batcher, store))

  def observe(self, route: str, signature: str, status: int, seconds: float) -> None:
    """Counts one response and its latency."""
    self.responses.labels(status=str(status)).inc()
    self.latency.labels(route=route, signature=signature).observe(seconds)

  def exposition(self) -> bytes:
    """The Prometheus text format of every metric."""
    return prometheus_client.generate_latest(self.registry)
