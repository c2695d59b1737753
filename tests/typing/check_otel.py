"""Checked by mypy --strict, never run: instrument() takes the SDK's provider, the API's
global one, or none (then the global one)."""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from resilient import otel

otel.instrument()
otel.instrument(MeterProvider(metric_readers=[InMemoryMetricReader()]))
otel.instrument(metrics.get_meter_provider())
otel.instrument(meter_provider=None)
otel.uninstrument()
