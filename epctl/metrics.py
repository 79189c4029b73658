"""Prometheus metrics (prefix ``epctl_``), one place for every name so none drift.

Hooks here implement the small protocols that engine parts accept (``ProbeMetrics``,
``InformerMetrics``), so pure and I/O code never imports prometheus_client itself. Per-target
probe series are off by default: with thousands of hosts they would explode cardinality.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client import metrics as _client_metrics
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from epctl.api.spec import ProbeKind
from epctl.kube.informer import RESTART_REASONS

PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)



class Tally:
    """One histogram series kept as plain counts: an observation is a bisect and two additions, no lock
    and no method chain. The probe histograms take a sample per probe, thousands a second, where
    prometheus_client's Histogram takes a lock per bucket and per sum (docs/design.md section 6)."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()  # exported as ``_created``, as prometheus_client's Histogram does

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # buckets are "le": value <= bound
        self.sum += value


class TallyHistogram(Collector):
    """A histogram family of :class:`Tally` series, exported like prometheus_client's Histogram (buckets,
    ``_sum``, ``_count``). Scrapes run in another thread: each series is copied before it is summed up,
    so its buckets and count always agree (the sum may lag a sample behind)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = PROBE_BUCKETS, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name, self.documentation, self.labelnames, self.buckets = name, documentation, labelnames, buckets
        self._series: dict[tuple[str, ...], Tally] = {}
        if not labelnames:
            self._series[()] = Tally(buckets)
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> Tally:
        tally = self._series.get(values)
        if tally is None:
            tally = self._series.setdefault(tuple(values), Tally(self.buckets))
        return tally

    def observe(self, value: float) -> None:
        self._series[()].observe(value)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
        for values, tally in list(self._series.items()):
            counts, total = list(tally.counts), tally.sum
            family.add_metric(list(values), list(zip(bounds, accumulate(counts), strict=True)), total)
            if _client_metrics._use_created:  # prometheus_client.disable_created_metrics() turns it off
                family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, values, strict=True)),
                                  tally.created)
        yield family


PROBES = Counter("epctl_probes", "Probe runs by probe type and result", ["type", "result"])
PROBE_DURATION = TallyHistogram("epctl_probe_duration_seconds", "Probe duration by probe type", ("type",),
                                buckets=PROBE_BUCKETS)
PROBE_LATENESS = TallyHistogram("epctl_probe_schedule_lateness_seconds",
                                "How late a probe started compared with its planned slot", buckets=LATENESS_BUCKETS)
PROBES_IN_FLIGHT = Gauge("epctl_probes_in_flight", "Probes running right now")
PROBE_STRETCH = Gauge("epctl_probe_period_stretch", "Factor every check's period is stretched by because the engine "
                      "cannot run all due probes (1: on schedule)")
PROBE_ADMISSION = Gauge("epctl_probe_admission_rate", "Probes the scheduler may start per second, steered by loop lag")
LOOP_LAG = Gauge("epctl_event_loop_lag_seconds", "Worst event-loop lag the probe scheduler measured in the last second")
WATCH_EVENTS = Counter("epctl_watch_events", "Watch events received", ["resource", "type"])
WATCH_RESTARTS = Counter("epctl_watch_restarts", "Watch (re)connections by reason", ["resource", "reason"])
RELISTS = Counter("epctl_relists", "Full relists after the watch's resourceVersion expired", ["resource"])


class PrometheusProbeMetrics:
    """``ProbeMetrics`` for the scheduler. Label children are resolved once, not per probe; the histograms
    are :class:`TallyHistogram` (no lock per sample); the in-flight gauge is set once per tick by the
    scheduler."""

    def __init__(self) -> None:
        kinds = [k.short for k in ProbeKind]
        self._results = {(k, ok): PROBES.labels(k, "success" if ok else "failure") for k in kinds
                         for ok in (True, False)}
        self._inconclusive = {k: PROBES.labels(k, "inconclusive") for k in kinds}
        self._durations = {k: PROBE_DURATION.labels(k) for k in kinds}

    def observe(self, kind: str, ok: bool, duration: float) -> None:
        self._results[(kind, ok)].inc()
        self._durations[kind].observe(duration)

    def inconclusive(self, kind: str) -> None:
        self._inconclusive[kind].inc()

    def pacing(self, stretch: float, admitted_per_second: float, loop_lag: float) -> None:
        PROBE_STRETCH.set(stretch)
        PROBE_ADMISSION.set(admitted_per_second)
        LOOP_LAG.set(loop_lag)

    def lateness(self, seconds: float) -> None:
        PROBE_LATENESS.observe(seconds)

    def in_flight(self, count: int) -> None:
        PROBES_IN_FLIGHT.set(count)


class PrometheusInformerMetrics:
    """``InformerMetrics`` for informers."""

    def known(self, resource: str) -> None:
        """Restarts and relists start at 0 for every reason known in advance: a rate() or an alert over
        ``increase()`` then sees the first one (a series born at 1 has no increase)."""
        for reason in RESTART_REASONS:
            WATCH_RESTARTS.labels(resource, reason)
        RELISTS.labels(resource)

    def event(self, resource: str, type_: str) -> None:
        WATCH_EVENTS.labels(resource, type_).inc()

    def restart(self, resource: str, reason: str) -> None:
        WATCH_RESTARTS.labels(resource, reason).inc()

    def relist(self, resource: str) -> None:
        RELISTS.labels(resource).inc()

CHANGES = Counter("epctl_changes", "API writes by operation and result", ["operation", "result"])
SYNCS = Counter("epctl_syncs", "Target reconciles by result", ["result"])
SYNC_DURATION = Histogram("epctl_sync_duration_seconds", "Time to reconcile one target")
WRITER_BATCH = Histogram("epctl_writer_batch_size", "Targets written per writer wake-up",
                         buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))


SYNC_RESULTS = ("success", "conflict", "invalid", "error")
for _result in SYNC_RESULTS:  # exported at 0 from the start: rate() and increase() need the zero
    SYNCS.labels(_result)
# the writer's operations (epctl/kube/writer.py): a series that first appears at 1 hides that write from rate()
WRITE_OPERATIONS = ("create", "update", "delete", "endpoints_create", "endpoints_update", "endpoints_delete",
                    "service_create", "service_replace", "service_update", "foreign_slice_delete")
for _operation in WRITE_OPERATIONS:
    CHANGES.labels(_operation, "success")
NOT_SYNCED_REASONS = ("Pending", "ServiceConflict", "WriteRejected", "WriteFailed", "InvalidSpec")
NOT_SYNCED = Gauge("epctl_clusterendpoints_not_synced", "ClusterEndpoints this replica owns that are not published "
                   "as their spec says, by reason (the Synced condition's reason; InvalidSpec for an invalid spec). A "
                   "state, not an event: a ServiceConflict is retried only when something changes, so a rate of "
                   "failed syncs would show it once and then never again", ["reason"])
for _reason in NOT_SYNCED_REASONS:
    NOT_SYNCED.labels(_reason)


class PrometheusWriterMetrics:
    """``WriterMetrics`` for the slice writer."""

    def batch(self, targets: int) -> None:
        WRITER_BATCH.observe(targets)

    def write(self, operation: str, result: str) -> None:
        CHANGES.labels(operation, result).inc()

    def sync(self, result: str, seconds: float) -> None:
        SYNCS.labels(result).inc()
        SYNC_DURATION.observe(seconds)

API_REQUESTS = Counter("epctl_api_requests", "Kubernetes API requests by HTTP verb and status code (0: no answer)",
                       ["verb", "code"])
ENDPOINTS_DESIRED = Gauge("epctl_endpoints_desired", "Endpoints epctl wants published, all Services")
ENDPOINTS = Gauge("epctl_endpoints", "Desired endpoints by readiness", ["state"])
SERVICE_ENDPOINTS = Gauge("epctl_service_endpoints", "Desired endpoints per managed Service by readiness (one series "
                          "pair per Service, like kube-state-metrics)", ["namespace", "service", "state"])
NUM_SLICES = Gauge("epctl_num_endpoint_slices", "EndpointSlices managed by epctl, as observed")
DESIRED_SLICES = Gauge("epctl_desired_endpoint_slices", "EndpointSlices the desired endpoints need at least")
CONVERGENCE = Histogram("epctl_convergence_seconds", "From a probe transition to the slice write that publishes it",
                        buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60))
LEADER = Gauge("epctl_leader", "1 while this replica is the leader: it probes and writes")
BUILD = Info("epctl_build", "epctl version and runtime")


def api_request(verb: str, code: int) -> None:
    """``KubeClient(on_response=...)`` hook."""
    API_REQUESTS.labels(verb, str(code)).inc()


TARGET_UP = Gauge("epctl_probe_target_up", "Last probe result per check (only with --per-target-metrics)",
                  ["clusterendpoint", "port", "address"])
TARGET_DURATION = Gauge("epctl_probe_target_duration_seconds",
                        "Last probe duration per check (only with --per-target-metrics)",
                        ["clusterendpoint", "port", "address"])


class PerTargetMetrics:
    """Opt-in per-check series: with thousands of hosts they are thousands of series, so off by default."""

    def result(self, target: str, port: str, address: str, ok: bool, duration: float) -> None:
        TARGET_UP.labels(target, port, address).set(1 if ok else 0)
        TARGET_DURATION.labels(target, port, address).set(duration)

    def forget(self, target: str, port: str, address: str) -> None:
        for gauge in (TARGET_UP, TARGET_DURATION):
            try:
                gauge.remove(target, port, address)
            except KeyError:
                pass

OPENSTACK_POLL_SECONDS = Histogram("epctl_openstack_poll_seconds", "Duration of one OpenStack discovery poll "
                                   "(every page of servers), by result", ["result"],
                                   buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
OPENSTACK_SERVERS = Gauge("epctl_openstack_servers", "Servers matching each poller's query at its last good poll",
                          ["poller"])
OPENSTACK_ERRORS = Counter("epctl_openstack_errors", "Failed OpenStack discovery polls by reason", ["reason"])
# classify() in epctl/sources/openstack.py: exported at 0 from the start, so rate() sees an outage's first poll
OPENSTACK_ERROR_REASONS = ("TLSVerificationFailed", "AuthenticationFailed", "Forbidden", "Timeout", "Unreachable",
                           "EndpointNotFound", "IdentityDiscoveryFailed", "ServerError", "HTTPError", "Error")
for _reason in OPENSTACK_ERROR_REASONS:
    OPENSTACK_ERRORS.labels(_reason)
for _result in ("success", "error"):
    OPENSTACK_POLL_SECONDS.labels(_result)
OPENSTACK_POLLERS = Gauge("epctl_openstack_pollers", "OpenStack pollers running (one per distinct credentials "
                          "and query)")


class PrometheusDiscoveryMetrics:
    """``DiscoveryMetrics`` for the OpenStack pollers."""

    def poll(self, poller: str, ok: bool, seconds: float, servers: int | None, reason: str) -> None:
        OPENSTACK_POLL_SECONDS.labels("success" if ok else "error").observe(seconds)
        if ok and servers is not None:
            OPENSTACK_SERVERS.labels(poller).set(servers)
        if not ok:
            OPENSTACK_ERRORS.labels(reason).inc()

    def pollers(self, count: int) -> None:
        OPENSTACK_POLLERS.set(count)

    def forget(self, poller: str) -> None:
        try:
            OPENSTACK_SERVERS.remove(poller)
        except KeyError:
            pass


SHARD_MEMBERS = Gauge("epctl_shard_members", "Live members of the shard ring as this replica sees them (--shard)")
SHARD_TARGETS_OWNED = Gauge("epctl_shard_targets_owned", "Targets (Services) this replica probes and writes now")
HANDOVERS = Counter("epctl_shard_handovers", "Targets this replica let go of or took over", ["direction"])
for _direction in ("acquired", "released"):  # exported from the start: rate() needs the zero
    HANDOVERS.labels(_direction)
GC_FULL_PAUSE = Histogram("epctl_gc_full_collection_seconds", "Pauses of the cyclic garbage collector's full "
                          "collections (the event loop stands still meanwhile; epctl/heap.py keeps them short)",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
HANDOVER_SECONDS = Histogram("epctl_shard_handover_seconds", "From seeing a new shard ring to every member having "
                             "applied it (targets that moved are written again from then on)",
                             buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60))


class PrometheusShardMetrics:
    """``ShardMetrics`` for the member Lease loop."""

    def members(self, count: int) -> None:
        SHARD_MEMBERS.set(count)

    def converged(self, seconds: float) -> None:
        HANDOVER_SECONDS.observe(seconds)
