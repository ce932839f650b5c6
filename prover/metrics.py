"""The engine's counters and gauges (``Metrics``), and their Prometheus text
exposition (format version 0.0.4) with each configured witness's, labelled
``witness="<name>+<key id>"``.

``Metrics`` is written on the event loop's thread only (the engine, the
fan-out, the server); /metrics reads it there too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prover.witnesses import WitnessStats

__all__ = ["Metrics", "render_metrics"]


@dataclass
class Metrics:
    """Counters and gauges exported on /metrics."""

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


def render_metrics(metrics: Metrics, witnesses: Sequence[WitnessStats] = ()) -> str:
    lines = []
    for name, (kind, text) in _HELP.items():
        full = f"solvency_{name}" + ("_total" if kind == "counter" else "")
        lines += [
            f"# HELP {full} {text}",
            f"# TYPE {full} {kind}",
            f"{full} {getattr(metrics, name)}",
        ]
    for name, (kind, text) in _WITNESS_HELP.items() if witnesses else ():
        full = f"solvency_witness_{name}" + ("_total" if kind == "counter" else "")
        lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
        for w in witnesses:
            value = {
                "cosigned_epoch": w.cosigned_epoch,
                "lag_epochs": w.lag,
                "failures": w.failures,
                "failing": w.failing,
                "latency_seconds": round(w.latency, 6),
            }[name]
            lines.append(f'{full}{{witness="{_label(w.endpoint.name)}"}} {value}')
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
