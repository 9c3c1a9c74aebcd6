"""
Prometheus metrics, each service with its own L{CollectorRegistry}: eth-server's and
eth-stats' (L{ethtwisted.metrics.server}) and eth-client's (L{ethtwisted.metrics.client}).

What is measured is given as callables, and what happens is reported to the metrics' own
methods: the wiring (C{server_tap}, C{client_tap}) connects them, so this package knows neither
the client's nor the server's classes.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

NAMESPACE = "ethtwisted"
REORG_DEPTH_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def metric(
    kind: Any, registry: CollectorRegistry, name: str, doc: str, *args: Any, **kwargs: Any
) -> Any:
    """
    A metric of C{kind} named C{ethtwisted_<name>} in C{registry}.
    """
    return kind(name, doc, *args, namespace=NAMESPACE, registry=registry, **kwargs)
