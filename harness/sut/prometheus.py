"""The one reader of a program's Prometheus endpoint (text format, read with prometheus_client's
parser): what §4.2 asks the connector through its metrics (rule C15 and the metrics table of
docs/sut-manifest.md)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 5.0


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


async def scrape(port: int, timeout: float = SCRAPE_TIMEOUT_S) -> str:
    """The text of 127.0.0.1:{port}/metrics (httpx.HTTPError when it cannot be read)."""
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(metrics_url(port), timeout=timeout)
    response.raise_for_status()
    return response.text


def scrape_sync(port: int, timeout: float = SCRAPE_TIMEOUT_S) -> str:
    """scrape() for code that runs no event loop."""
    with httpx.Client(trust_env=False) as client:
        response = client.get(metrics_url(port), timeout=timeout)
    response.raise_for_status()
    return response.text


def sample_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The first sample called `name` whose labels include `labels` (None when there is none)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return None


def sample_total(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The sum of the samples called `name` whose labels include `labels` (None when there is none)."""
    values = [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items())
    ]
    return sum(values) if values else None


__all__ = ["metrics_url", "sample_total", "sample_value", "scrape", "scrape_sync"]
