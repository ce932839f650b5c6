"""Prometheus text exposition of the engine's metrics (format version 0.0.4)."""

from __future__ import annotations

from prover.engine import Metrics

__all__ = ["render_metrics"]

_HELP = {
    "epoch": ("gauge", "Number of the last published epoch."),
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


def render_metrics(metrics: Metrics) -> str:
    lines = []
    for name, (kind, text) in _HELP.items():
        full = f"solvency_{name}" + ("_total" if kind == "counter" else "")
        lines += [
            f"# HELP {full} {text}",
            f"# TYPE {full} {kind}",
            f"{full} {getattr(metrics, name)}",
        ]
    return "\n".join(lines) + "\n"
