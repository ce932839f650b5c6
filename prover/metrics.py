"""The engine's metrics (``Metrics``) and their Prometheus exposition
(``render_metrics``), with each configured witness's, labelled
``witness="<name>+<key id>"``.

Counters and gauges are plain fields, written where things happen and read
at scrape time by a collector; latencies are ``prometheus_client``
histograms, observed once per batch, epoch or submission (never per
update). Each ``Metrics`` has a registry of its own, so that engines in one
process do not clash.

``Metrics`` is written on the event loop's thread only (the engine, the
fan-out, the server, the witnesses' reports); /metrics reads it there too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from prover.witnesses import WitnessStats

__all__ = [
    "LATENCY_BUCKETS",
    "Family",
    "FrontendMetrics",
    "Metrics",
    "RoleMetrics",
    "Sample",
    "Snapshot",
    "render_metrics",
]

# Seconds, from 1 ms to 10 s: finest around the targets (tens of ms from commit
# to publication, a witness timeout of 1 s), so that p99 interpolates within a
# bucket a third to a half wide.
LATENCY_BUCKETS = (
    0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass
class Metrics:
    """Counters and gauges exported on /metrics, and the latency histograms."""

    updates: int = 0
    epoch: int = -1
    epoch_build_seconds: float = 0.0
    tree_seconds: float = 0.0
    loop_lag_seconds: float = 0.0
    last_epoch_time: float = 0.0
    last_publish_time: float = 0.0
    published_epoch: int = -1  # the last epoch handed to subscribers (witnesses: after epoch)
    subscribers: int = 0
    shed_subscribers: int = 0
    connections: int = 0
    refused_connections: int = 0
    connection_bytes: int = 0
    ingest_errors: int = 0
    unfolded_updates: int = 0
    epoch_failures: int = 0
    epoch_failing: int = 0  # failed attempts in a row at the epoch being retried
    last_epoch_error_time: float = 0.0
    last_epoch_error: str = ""  # the class of the last failure (not a metric)
    witnesses: Sequence[WitnessStats] = ()  # as of the last scrape (``render_metrics``)
    registry: CollectorRegistry = field(init=False, repr=False, compare=False)
    ingest_batch: Histogram = field(init=False, repr=False, compare=False)
    epoch_close: Histogram = field(init=False, repr=False, compare=False)
    publication_delay: Histogram = field(init=False, repr=False, compare=False)
    fanout: Histogram = field(init=False, repr=False, compare=False)
    witness_submission: Histogram = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Fields(self))

        def histogram(name: str, text: str, *labels: str) -> Histogram:
            return Histogram(
                f"solvency_{name}", text, labels, registry=self.registry, buckets=LATENCY_BUCKETS
            )

        self.ingest_batch = histogram(
            "ingest_batch_seconds", "Time from an ingest batch's arrival to its ack (stored)."
        )
        self.epoch_close = histogram(
            "epoch_close_seconds", "Time from an epoch close's start (or retry) to its commit."
        )
        self.publication_delay = histogram(
            "publication_delay_seconds",
            "Time from an epoch's commit to its publication (witnesses: the quorum's wait).",
        )
        self.fanout = histogram(
            "fanout_seconds", "Time taken handing one epoch to every root stream subscriber."
        )
        self.witness_submission = histogram(
            "witness_submission_seconds", "Time each submission to the witness took.", "witness"
        )

    def observe_witness(self, name: str, seconds: float) -> None:
        """A submission to witness ``name`` took ``seconds``."""
        self.witness_submission.labels(witness=name).observe(seconds)


_HELP = {
    "epoch": ("gauge", "Number of the last committed epoch."),
    "published_epoch": ("gauge", "Number of the last epoch handed to root stream subscribers."),
    "updates": ("counter", "Balance updates applied since start."),
    "ingest_errors": ("counter", "Ingest messages refused since start."),
    "epoch_build_seconds": ("gauge", "Time to close the last epoch, trees to publication."),
    "tree_seconds": ("gauge", "Time the tree worker took for the last epoch."),
    "loop_lag_seconds": ("gauge", "Event loop lag measured by the epoch timer."),
    "last_epoch_time": ("gauge", "Unix time the last epoch closed."),
    "last_publish_time": ("gauge", "Unix time the last epoch was handed to subscribers."),
    "subscribers": ("gauge", "Connected root stream subscribers."),
    "shed_subscribers": ("counter", "Subscribers closed for falling behind."),
    "connections": ("gauge", "Open connections, handshakes under way included."),
    "refused_connections": ("counter", "Connections closed at accept: max_connections reached."),
    "connection_bytes": ("gauge", "Bytes held for connections: requests, input, queues, output."),
    "unfolded_updates": ("gauge", "Acknowledged balance updates not yet folded from the journal."),
    "epoch_failures": ("counter", "Attempts at closing an epoch that failed (each is retried)."),
    "epoch_failing": ("gauge", "Failed attempts in a row at the epoch being retried; 0: none."),
    "last_epoch_error_time": ("gauge", "Unix time of the last failed attempt at an epoch."),
}


_WITNESS_HELP = {
    "cosigned_epoch": ("gauge", "The last epoch the witness cosigned; -1: none known."),
    "lag_epochs": ("gauge", "Epochs from the witness's last cosignature to the last committed."),
    "failures": ("counter", "Submissions to the witness that failed since start."),
    "failing": ("gauge", "Failed submissions in a row; 0: its last answer was a cosignature."),
    "latency_seconds": ("gauge", "Time the last submission to the witness took."),
}


def _family(
    name: str, kind: str, text: str, labels: Sequence[str] = ()
) -> CounterMetricFamily | GaugeMetricFamily:
    """A gauge or counter family (a counter's samples get ``_total``)."""
    if kind == "counter":
        return CounterMetricFamily(name, text, labels=labels)
    return GaugeMetricFamily(name, text, labels=labels)


class _Fields(Collector):
    """``Metrics``' fields and its witnesses' state, read at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        for name, (kind, text) in _HELP.items():
            family = _family(f"solvency_{name}", kind, text)
            family.add_metric([], getattr(m, name))
            yield family
        for name, (kind, text) in _WITNESS_HELP.items() if m.witnesses else ():
            family = _family(f"solvency_witness_{name}", kind, text, ["witness"])
            for w in m.witnesses:
                value = {
                    "cosigned_epoch": w.cosigned_epoch,
                    "lag_epochs": w.lag,
                    "failures": w.failures,
                    "failing": w.failing,
                    "latency_seconds": round(w.latency, 6),
                }[name]
                family.add_metric([w.endpoint.name], value)
            yield family


def render_metrics(metrics: Metrics, witnesses: Sequence[WitnessStats] = ()) -> str:
    """The exposition of ``metrics`` with ``witnesses``' state (Prometheus text:
    serve it as ``prometheus_client.CONTENT_TYPE_LATEST``)."""
    metrics.witnesses = tuple(witnesses)
    return generate_latest(metrics.registry).decode()


def epoch_health(metrics: Metrics, now: float, max_interval: float) -> str | None:
    """None while epochs keep coming, else why not: the last attempt at an
    epoch failed, or the last epoch is over two heartbeats old."""
    if failures := metrics.epoch_failing:
        error = metrics.last_epoch_error
        return f"epoch {metrics.epoch + 1} failing: {error} ({failures} attempts)"
    late = now - metrics.last_epoch_time
    if late > 2 * max_interval + 1:
        return f"late: no epoch for {late:.0f} s" if metrics.last_epoch_time else "late"
    return None


# A sharded prover's front-ends and shards (prover/shards/): the listener's
# fields of ``Metrics`` and families of their own, rendered by render_metrics.

Sample = float | Mapping[str, float]  # one value, or one per value of the family's label
Family = tuple[str, str, str]  # kind ("gauge" or "counter"), help, label name ("": none)


class Snapshot(Collector):
    """The families ``families`` (full name: kind, help, label), their values
    read by ``read`` at each scrape; a name ``read`` leaves out is not
    exported (a value not known yet). A labelled family's samples come in
    the order of their label values."""

    def __init__(
        self, families: Mapping[str, Family], read: Callable[[], Mapping[str, Sample]]
    ) -> None:
        self._families, self._read = families, read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        for name, (kind, text, label) in self._families.items():
            value = values.get(name)
            if value is None:
                continue
            family = _family(name, kind, text, [label] if label else [])
            if isinstance(value, Mapping):
                for key, sample in sorted(value.items()):
                    family.add_metric([key], sample)
            else:
                family.add_metric([], value)
            yield family


_LISTENER_FIELDS = ("connections", "refused_connections", "connection_bytes")


@dataclass
class RoleMetrics(Metrics):
    """The metrics of a process of a sharded prover that serves HTTP (a
    front-end, a shard): of ``Metrics``' fields, only its listener's, which
    prover/gate.py writes (``connections``, ``refused_connections``;
    ``connection_bytes`` set before each scrape); the role registers its own
    collectors on ``registry``. ``render_metrics`` renders it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.registry = CollectorRegistry()  # the daemon's families are not this role's
        families = {f"solvency_{n}": (*_HELP[n], "") for n in _LISTENER_FIELDS}
        self.registry.register(
            Snapshot(
                families, lambda: {f"solvency_{n}": getattr(self, n) for n in _LISTENER_FIELDS}
            )
        )


_FRONTEND_FAMILIES: dict[str, Family] = {
    "solvency_updates": (
        "counter",
        "Balance updates and reserve reports accepted: in a commit the stream acknowledged.",
        "",
    ),
    "solvency_ingest_errors": ("counter", "Ingest messages refused since start.", ""),
    "solvency_frontend_batches": (
        "counter",
        "Ingest messages accepted: their commit acknowledged by the stream (duplicates too).",
        "",
    ),
    "solvency_frontend_refused": (
        "counter",
        "Ingest messages refused, by the code of the error reply.",
        "reason",
    ),
    "solvency_frontend_inflight_parts": (
        "gauge",
        "Parts and commits published and not yet acknowledged by the stream.",
        "",
    ),
    "solvency_frontend_nats_connected": ("gauge", "1 while connected to NATS, else 0.", ""),
}


@dataclass
class FrontendMetrics(RoleMetrics):
    """A front-end's metrics (prover/shards/frontend.py): its listener's, the
    daemon's ingest counters and ``ingest_batch`` histogram (arrival to ack),
    and its own: ``batches`` accepted, ``refused`` by reason (an error code),
    ``inflight_parts``, ``nats_connected`` (set before each scrape) and the
    ``publish`` histogram (a batch's parts and commit, to the stream's
    acknowledgement of its commit). Written on the event loop's thread."""

    batches: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    inflight_parts: int = 0
    nats_connected: bool = False
    publish: Histogram = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.registry.register(Snapshot(_FRONTEND_FAMILIES, self._values))
        self.registry.register(self.ingest_batch)
        self.publish = Histogram(
            "solvency_frontend_publish_seconds",
            "Time from a batch's first part published to its commit acknowledged.",
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )

    def refuse(self, reason: str) -> None:
        """An ingest message was refused with error code ``reason``."""
        self.ingest_errors += 1
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def _values(self) -> dict[str, Sample]:
        return {
            "solvency_updates": self.updates,
            "solvency_ingest_errors": self.ingest_errors,
            "solvency_frontend_batches": self.batches,
            "solvency_frontend_refused": dict(self.refused),
            "solvency_frontend_inflight_parts": self.inflight_parts,
            "solvency_frontend_nats_connected": int(self.nats_connected),
        }
