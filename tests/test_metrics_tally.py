"""The lock-free probe histograms (epctl.metrics.TallyHistogram) export exactly what prometheus_client's
Histogram exports for the same samples: buckets ("le": a sample on a bound counts in it), sum, count."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from epctl.metrics import PROBE_BUCKETS, TallyHistogram


def test_tally_histogram_exports_what_a_prometheus_histogram_does() -> None:
    samples = [0.0, 0.0005, 0.0004, 0.003, 0.0025, 1, 7.5, 10, 20.0]
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "doc", ["type"], buckets=PROBE_BUCKETS, registry=theirs)
    tally = TallyHistogram("h_seconds", "doc", ("type",), PROBE_BUCKETS, registry=ours)
    for value in samples:
        reference.labels("tcp").observe(value)
        tally.labels("tcp").observe(value)

    def lines(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert lines(ours) == lines(theirs)
    assert 'h_seconds_bucket{le="0.0005",type="tcp"} 3.0' in lines(ours)


def test_tally_histogram_exports_the_same_series_as_a_prometheus_histogram_created_included() -> None:
    """prometheus_client's Histogram also exports ``<name>_created`` per series (its start time, which
    rate() over a restarted process and OpenMetrics scrapers use); the same series must be there."""
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    theirs, ours = CollectorRegistry(), CollectorRegistry()
    Histogram("h_seconds", "doc", ["type"], buckets=PROBE_BUCKETS, registry=theirs).labels("tcp").observe(0.1)
    TallyHistogram("h_seconds", "doc", ("type",), PROBE_BUCKETS, registry=ours).labels("tcp").observe(0.1)

    def series(text: bytes) -> set[str]:
        return {line.rsplit(" ", 1)[0] for line in text.decode().splitlines() if not line.startswith("#")}

    assert series(generate_latest(ours)) == series(generate_latest(theirs))
    assert series(openmetrics(ours)) == series(openmetrics(theirs))
