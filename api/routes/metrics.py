"""``/metrics`` (Prometheus text format) and ``/dispatchers`` (the registry).

The webhook counters and histograms, the backlog gauges and the registry describe the whole
deployment (read from the database through api/observe.py, cached); only
``timerhook_timers_created_total`` and the ``process_*`` metrics are this API process's own.
Labels are bounded: outcomes, cap scopes and the ids of dispatchers seen in the last hour.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from api.deps import AdminDep, MetricsDep, ObserverDep
from api.observe import Counts
from api.views import DispatcherPublic, dispatcher_public
from core.caps import Cap
from db.models import Dispatcher
from db.stats import BOUNDS, OUTCOMES, Totals

router = APIRouter(tags=["operations"])

# The label value of each stored outcome (a retried attempt is a "retry").
OUTCOME_LABELS = {"delivered": "delivered", "retried": "retry", "failed": "failed", "dead": "dead"}


def _histogram(name: str, doc: str, buckets: list[int], total: float) -> HistogramMetricFamily:
    cumulative = []
    running = 0
    for bound, count in zip([*map(str, BOUNDS), "+Inf"], buckets, strict=True):
        running += count
        cumulative.append((bound, float(running)))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=total)


def cluster_metrics(
    counts: Counts, totals: Totals, dispatchers: list[Dispatcher], caps: list[Cap],
    now: datetime,
) -> Iterator[Metric]:  # fmt: skip
    """The deployment-wide metrics from one set of cached reads."""
    sent = CounterMetricFamily(
        "timerhook_webhooks", "Webhook attempts by outcome (every dispatcher).", labels=["outcome"]
    )
    for outcome in OUTCOMES:
        sent.add_metric([OUTCOME_LABELS[outcome]], totals.counts[outcome])
    yield sent
    yield _histogram(
        "timerhook_webhook_lateness_seconds",
        "From a timer's due time (or retry time) to its send.",
        totals.lateness, totals.lateness_sum,
    )  # fmt: skip
    yield _histogram(
        "timerhook_webhook_attempt_duration_seconds",
        "From a request's start to its answer (or failure).",
        totals.latency, totals.latency_sum,
    )  # fmt: skip
    yield CounterMetricFamily(
        "timerhook_cap_waits", "Claim passes that found a cap without tokens and waited.",
        value=totals.cap_waits,
    )  # fmt: skip
    yield CounterMetricFamily(
        "timerhook_stale_outcomes",
        "Send outcomes not recorded because their lease had been taken over meanwhile (a "
        "dispatcher that paused past dead_after_seconds): the new owner records the timer.",
        value=totals.stale,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "timerhook_timers_pending", "Timers waiting for their send (due or not).",
        value=counts.pending,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "timerhook_timers_overdue", "Pending timers whose time has come.",
        value=counts.overdue.overdue,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "timerhook_oldest_overdue_age_seconds",
        "How long the oldest overdue timer has been due (0: none).",
        value=counts.overdue.oldest_age_seconds or 0.0,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "timerhook_timers_in_flight", "Timers being sent right now (every dispatcher).",
        value=counts.overdue.in_flight,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "timerhook_dead_letters", "Dead timers (retries used up), waiting for a requeue.",
        value=counts.dead,
    )  # fmt: skip
    up = GaugeMetricFamily(
        "timerhook_dispatcher_up",
        "1 while a dispatcher heartbeats; 0 for one that stopped or went silent (listed for "
        "an hour after a crash).",
        labels=["dispatcher"],
    )
    in_flight = GaugeMetricFamily(
        "timerhook_dispatcher_in_flight", "Rows a dispatcher holds (claimed, not recorded).",
        labels=["dispatcher"],
    )  # fmt: skip
    age = GaugeMetricFamily(
        "timerhook_dispatcher_heartbeat_age_seconds", "Seconds since a dispatcher's heartbeat.",
        labels=["dispatcher"],
    )  # fmt: skip
    for d in dispatchers:
        up.add_metric([d.id], 1.0 if d.alive else 0.0)
        in_flight.add_metric([d.id], d.in_flight if d.alive else 0)
        age.add_metric([d.id], max(0.0, (now - d.heartbeat_at).total_seconds()))
    yield from (up, in_flight, age)
    yield GaugeMetricFamily(
        "timerhook_dispatchers_alive", "Dispatchers heartbeating now.",
        value=sum(d.alive for d in dispatchers),
    )  # fmt: skip
    tokens = GaugeMetricFamily(
        "timerhook_cap_tokens", "Tokens in a cap's bucket now.", labels=["scope"]
    )
    limit = GaugeMetricFamily(
        "timerhook_cap_per_minute", "A cap's rate (0: no cap).", labels=["scope"]
    )
    for cap in caps:
        tokens.add_metric([cap.scope], cap.tokens)
        limit.add_metric([cap.scope], cap.per_minute)
    yield from (tokens, limit)


class _Snapshot:
    """A collector over one set of reads, rendered once."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
async def metrics(observer: ObserverDep, own: MetricsDep, _admin: AdminDep) -> Response:
    """Prometheus metrics: webhooks by outcome, lateness and attempt latency histograms, the
    backlog, dispatchers and caps (the whole deployment, cached for half a second), and this
    process's creates. Every metric is listed in docs/operations.md."""
    read = cluster_metrics(
        await observer.counts.get(), await observer.totals.get(),
        await observer.dispatchers.get(), await observer.caps.get(), datetime.now(UTC),
    )  # fmt: skip
    snapshot = CollectorRegistry()
    snapshot.register(_Snapshot(list(read)))
    body = generate_latest(own.registry) + generate_latest(snapshot)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/dispatchers", response_model=list[DispatcherPublic])
async def dispatchers(observer: ObserverDep, _admin: AdminDep) -> list[DispatcherPublic]:
    """The dispatcher registry, newest first: live ones, and stopped or silent ones for a
    while after (a minute after a clean stop, an hour after a crash). Cached for half a second."""
    now = datetime.now(UTC)
    return [dispatcher_public(d, now) for d in await observer.dispatchers.get()]
