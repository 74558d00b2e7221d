"""OpenTelemetry providers, readers and every instrument this package records.

Instrument names are dotted OpenTelemetry names whose units are chosen so that both the
in-process Prometheus exporter and the Collector's Prometheus exporter produce the same
names: a counter ``autobot.timeout`` with the annotation unit ``{timeout}`` becomes
``autobot_timeout_total``, and a histogram ``autobot.operation.duration`` in ``s`` becomes
``autobot_operation_duration_seconds``. Gauges avoid the unit ``1``, which the Collector
turns into a ``_ratio`` suffix, except where the name already ends in ``ratio``.

Without ``setup_telemetry()`` the instruments come from the global OpenTelemetry API, so
an application that configures its own SDK providers gets our data there.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import Tracer

__all__ = [
    "DURATION_BUCKETS",
    "TelemetryHandle",
    "add_gauge_source",
    "instruments",
    "setup_telemetry",
]

logger = logging.getLogger("autobot_otel")

SCOPE_NAME = "autobot_otel"
DURATION_BUCKETS: tuple[float, ...] = (0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

# Gauge sources are callables returning (value, attributes) pairs. Several modules add to
# them: the breaker registry, Redis pools, the configuration.
GaugeSource = Callable[[], Iterable[tuple[float, Mapping[str, str]]]]
_GAUGE_NAMES = (
    "breaker_state",
    "pool_connections",
    "pool_saturation",
    "config_info",
    "operation_timeout",
)
_gauge_sources: dict[str, list[GaugeSource]] = {name: [] for name in _GAUGE_NAMES}
_failed_sources: set[int] = set()


def add_gauge_source(gauge: str, source: GaugeSource) -> None:
    """Register ``source`` to feed the observable gauge ``gauge`` at every collection."""
    if gauge not in _gauge_sources:
        raise ValueError(f"unknown gauge {gauge!r}; expected one of {', '.join(_GAUGE_NAMES)}")
    _gauge_sources[gauge].append(source)


def remove_gauge_source(gauge: str, source: GaugeSource) -> None:
    """Stop feeding ``gauge`` from ``source``; unknown sources are ignored."""
    sources = _gauge_sources.get(gauge, [])
    if source in sources:
        sources.remove(source)


def _observe(gauge: str, owner: Instruments) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        if _instruments is not owner:
            return []
        observations: list[Observation] = []
        for source in list(_gauge_sources[gauge]):
            try:
                observations.extend(Observation(value, dict(attrs)) for value, attrs in source())
            except Exception:
                # One broken source must not hide the others; log it once, not per scrape.
                if id(source) not in _failed_sources:
                    _failed_sources.add(id(source))
                    logger.exception(
                        "telemetry.gauge_source_failed", extra={"autobot.gauge": gauge}
                    )
        return observations

    return callback


class InProcessCounter:
    """A monotonic counter summed in process and reported by an observable counter.

    ``add()`` takes the same arguments as an SDK counter's, but it only updates a dict
    under a lock. The SDK's ``Counter.add()`` validates and hashes the attributes and
    offers an exemplar on every call, the same measurement path that a histogram's
    ``record()`` takes (docs/performance.md measures that path). Collection reports the
    totals, so a scrape shows the same series, values and ``_total`` name. Unlike a
    synchronous counter, it attaches no exemplars.
    """

    def __init__(
        self, meter: Meter, name: str, unit: str, description: str, owner: Instruments
    ) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        """Add ``amount`` to the series with ``attributes``."""
        key = tuple(attributes.items())
        # The lock keeps increments from event loops in several threads from being lost.
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        if _instruments is not self._owner:
            return []
        with self._lock:
            counts = list(self._counts.items())
        return [Observation(total, dict(key)) for key, total in counts]


class Instruments:
    """Every instrument of the package, created from one meter and one tracer.

    Only the active set reports observable values. Instruments made before
    ``setup_telemetry()`` come from the API's proxy meter, which forwards to the SDK
    provider once one is set, so without that check every series would appear twice.
    """

    def __init__(self, meter: Meter, tracer: Tracer) -> None:
        self.tracer = tracer
        # When a backend stalls, many calls time out at once, and every timeout handled
        # delays the next one on the event loop, so this count takes the cheap path too.
        self.timeouts = InProcessCounter(
            meter,
            "autobot.timeout",
            unit="{timeout}",
            description="Deadlines that fired, by operation and by whose deadline it was",
            owner=self,
        )

        self.duration = meter.create_histogram(
            "autobot.operation.duration",
            unit="s",
            description="Duration of timed operations, whatever their outcome",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )

        # Counted on every Redis call, so it takes the cheaper in-process path.
        self.redis_requests = InProcessCounter(
            meter,
            "autobot.redis.requests",
            unit="{request}",
            description="Redis operations by database, operation and outcome",
            owner=self,
        )

        self.breaker_events = meter.create_counter(
            "autobot.circuit_breaker.events",
            unit="{event}",
            description="Circuit breaker transitions and decisions",
        )
        self.config_reloads = meter.create_counter(
            "autobot.config.reloads",
            unit="{reload}",
            description="Configuration reload attempts by outcome",
        )
        # Both series exist from the start, so that increase() counts the first failed reload.
        for status in ("success", "invalid"):
            self.config_reloads.add(0, {"status": status})

        for source, name, unit, description in _GAUGES:
            meter.create_observable_gauge(
                name, callbacks=[_observe(source, self)], unit=unit, description=description
            )


# Observable gauges: the gauge source that feeds each, its instrument name, unit and
# description. The unit "1" goes only on a name ending in "ratio", because the Collector
# appends "_ratio" to any gauge in unit "1".
_GAUGES = (
    (
        "breaker_state",
        "autobot.circuit_breaker.state",
        "{state}",
        "Circuit breaker state: closed 0, open 1, half_open 2",
    ),
    (
        "pool_connections",
        "autobot.redis.pool.connections",
        "{connection}",
        "Redis pool connections by state (in_use, idle)",
    ),
    (
        "pool_saturation",
        "autobot.redis.pool.saturation_ratio",
        "1",
        "Redis pool connections in use divided by max_connections",
    ),
    (
        "config_info",
        "autobot.config.info",
        "",
        "1 for the active configuration, labelled by environment and hash",
    ),
    (
        "operation_timeout",
        "autobot.operation.timeout",
        "s",
        "Configured timeout of each declared operation",
    ),
)


_state_lock = threading.Lock()
_instruments: Instruments | None = None
_handle: TelemetryHandle | None = None


def instruments() -> Instruments:
    """Return the active instruments, creating them from the global API on first use."""
    current = _instruments
    if current is None:
        with _state_lock:
            if _instruments is None:
                _install(Instruments(metrics.get_meter(SCOPE_NAME), trace.get_tracer(SCOPE_NAME)))
            current = _instruments
    assert current is not None
    return current


def _install(new: Instruments | None) -> None:
    global _instruments
    _instruments = new
    for listener in list(_instrument_listeners):
        listener()


_instrument_listeners: list[Callable[[], None]] = []


def add_instruments_listener(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever the active instruments are replaced."""
    _instrument_listeners.append(listener)


@dataclass
class TelemetryHandle:
    """The providers and registry that ``setup_telemetry()`` built; ``shutdown()`` stops them."""

    meter_provider: Any
    tracer_provider: Any
    prometheus_registry: Any
    resource: Any
    _shut_down: bool = field(default=False, repr=False)

    def shutdown(self, timeout_seconds: float = 5.0) -> bool:
        """Flush pending telemetry and stop the providers within ``timeout_seconds``.

        Returns False when the flush did not finish in time, for example because the
        Collector is unreachable. The SDK's span flush does not honour its own timeout
        (opentelemetry-sdk 1.45), so the work runs in daemon threads that this call
        waits for at most ``timeout_seconds``. Telemetry still unsent then is dropped.
        """
        global _handle
        if self._shut_down:
            return True
        self._shut_down = True
        with _state_lock:
            if _handle is self:
                _handle = None
                _install(None)

        millis = int(timeout_seconds * 1000)

        def stop_tracing() -> None:
            try:
                # Shutting down flushes the batch processor, and stops the exporter's
                # retries once the exporter itself is shut down.
                self.tracer_provider.shutdown()
            except Exception:
                logger.exception("telemetry.tracer_shutdown_failed")

        def stop_metrics() -> None:
            try:
                self.meter_provider.shutdown(timeout_millis=millis)
            except Exception:
                logger.exception("telemetry.meter_shutdown_failed")

        # Traces and metrics stop side by side, each with the whole budget, so a slow
        # trace flush cannot leave the metric reader's thread running forever.
        workers = [
            threading.Thread(target=stop, name=f"autobot-otel-{stop.__name__}", daemon=True)
            for stop in (stop_tracing, stop_metrics)
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + timeout_seconds
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in workers):
            logger.warning(
                "telemetry.shutdown_timed_out: unsent telemetry was dropped after %.1f s",
                timeout_seconds,
            )
            return False
        return True


def setup_telemetry(
    service_name: str = "autobot",
    *,
    environment: str | None = None,
    resource_attributes: Mapping[str, str] | None = None,
    otlp_endpoint: str | None = None,
    prometheus: bool = True,
    metric_readers: Sequence[Any] = (),
    span_processors: Sequence[Any] = (),
    set_global: bool = True,
    export_interval_seconds: float | None = None,
) -> TelemetryHandle:
    """Set up meter and tracer providers for the service and return their handle.

    A Prometheus reader feeds ``/monitoring/metrics``. OTLP export of metrics and traces
    (HTTP/protobuf) is on when ``otlp_endpoint`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
    set. Metrics go out every ``export_interval_seconds``, by default the standard
    ``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds) or else 15 s.

    With ``set_global`` the providers also become the global OpenTelemetry ones, unless
    another provider is already global, so that instrumentations such as
    RedisInstrumentor report into them. Calling it again while a handle is active
    returns that handle unchanged.
    """
    global _handle
    with _state_lock:
        if _handle is not None:
            return _handle

    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ._config import get_config

    env = environment or get_config().environment
    attributes: dict[str, str] = {
        "service.name": service_name,
        "service.instance.id": str(uuid.uuid4()),
        "deployment.environment.name": env,
    }
    attributes.update(resource_attributes or {})
    resource = Resource.create(attributes)

    readers: list[Any] = list(metric_readers)
    registry = None
    if prometheus:
        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(scope_info_enabled=False, registry=registry))

    endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    processors: list[Any] = list(span_processors)
    if endpoint:
        interval = export_interval_seconds or _interval_from_environment()
        readers.append(_otlp_metric_reader(endpoint, interval))
        processors.append(_otlp_span_processor(endpoint))

    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=readers,
        views=[
            View(
                instrument_name="autobot.operation.duration",
                aggregation=ExplicitBucketHistogramAggregation(boundaries=DURATION_BUCKETS),
            )
        ],
    )
    tracer_provider = TracerProvider(resource=resource)
    for processor in processors:
        tracer_provider.add_span_processor(processor)

    if set_global:
        _set_global_providers(meter_provider, tracer_provider)

    handle = TelemetryHandle(meter_provider, tracer_provider, registry, resource)
    with _state_lock:
        _handle = handle
        _install(
            Instruments(
                meter_provider.get_meter(SCOPE_NAME),
                tracer_provider.get_tracer(SCOPE_NAME),
            )
        )
    logger.info(
        "telemetry.started",
        extra={"autobot.service": service_name, "autobot.otlp_endpoint": endpoint or ""},
    )
    return handle


def current_handle() -> TelemetryHandle | None:
    """Return the handle of the active ``setup_telemetry()`` call, if any."""
    return _handle


def _set_global_providers(meter_provider: Any, tracer_provider: Any) -> None:
    from opentelemetry.metrics import _internal as metrics_internal
    from opentelemetry.trace import ProxyTracerProvider

    if isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        trace.set_tracer_provider(tracer_provider)
    else:
        logger.warning("telemetry.global_tracer_provider_exists")
    if isinstance(metrics.get_meter_provider(), metrics_internal._ProxyMeterProvider):
        metrics.set_meter_provider(meter_provider)
    else:
        logger.warning("telemetry.global_meter_provider_exists")


def _interval_from_environment() -> float:
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "")
    if not raw:
        return 15.0
    try:
        millis = float(raw)
    except ValueError:
        millis = -1.0
    if not millis > 0:
        logger.warning(
            "telemetry.invalid_export_interval: OTEL_METRIC_EXPORT_INTERVAL=%r is not a "
            "positive number of milliseconds; using 15000",
            raw,
        )
        return 15.0
    return millis / 1000


def _otlp_url(endpoint: str, signal: str) -> str:
    return f"{endpoint.rstrip('/')}/v1/{signal}"


def _otlp_metric_reader(endpoint: str, interval_seconds: float) -> Any:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    # A short exporter timeout keeps shutdown quick when the Collector is unreachable.
    exporter = OTLPMetricExporter(endpoint=_otlp_url(endpoint, "metrics"), timeout=3)
    return PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=interval_seconds * 1000,
        export_timeout_millis=5000,
    )


def _otlp_span_processor(endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=_otlp_url(endpoint, "traces"), timeout=3)
    # The queue bound keeps memory flat while the Collector is down; the SDK drops and
    # counts spans beyond it.
    return BatchSpanProcessor(exporter, max_queue_size=2048, export_timeout_millis=5000)


def _config_info() -> list[tuple[float, dict[str, str]]]:
    from ._config import get_config

    config = get_config()
    return [(1, {"environment": config.environment, "config_hash": config.config_hash})]


def _count_reload(status: str, config: object) -> None:
    instruments().config_reloads.add(1, {"status": status})


def _register_config_telemetry() -> None:
    from ._config import add_reload_listener

    add_gauge_source("config_info", _config_info)
    add_reload_listener(_count_reload)


_register_config_telemetry()
