"""Scrape a real ``/metrics`` over HTTP and read samples, for the metrics tests."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    """``/metrics`` as {(sample name, labels): value}; an empty label is no label, as in Prometheus."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if v)): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, sample: str, **labels: str) -> float:
    """The sample's value, 0 when absent (as a counter that never moved)."""
    return samples.get((sample, frozenset((k, v) for k, v in labels.items() if v)), 0.0)
