"""The v1 Endpoints epctl writes stay valid however many hosts, ports and readiness mixes there are:
checked with the test API server's ValidateEndpoints (kube-apiserver's rules) over a property-based
range, around and far past the 1,000-address truncation point."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from epctl.endpoints import MAX_CAPACITY, desired_subsets
from epctl.state import Endpoint, PortGroup, SlicePort
from epctl.testing.builtins import ValidationContext, validate_endpoints

CTX = ValidationContext(allow_loopback=False, allocate_cluster_ip=lambda: "", allocate_node_port=lambda: 0)


def _ip(k: int) -> str:
    return f"10.{k // 65536}.{(k // 256) % 256}.{k % 256}"


# per port: (first host, host count, readiness: every n-th host ready; 0 none, 1 all)
PORT = st.tuples(st.integers(0, 600), st.integers(0, 1500), st.sampled_from([0, 1, 2, 3, 7, 50, 1000]))


def _groups(ports: list[tuple[int, int, int]]) -> list[PortGroup]:
    groups = []
    for p, (first, count, every) in enumerate(ports):
        endpoints = {_ip(k): Endpoint(_ip(k), ready, ready) for k in range(first, first + count)
                     for ready in [every != 0 and k % every == 0]}
        groups.append(PortGroup("IPv4", (SlicePort(f"p{p}", 8000 + p),), endpoints))
    return groups


@settings(max_examples=150, deadline=None)
@given(st.lists(PORT, min_size=1, max_size=4))
@example([(0, 1200, 1), (0, 1200, 0)])  # a port down on all of more than 1,000 hosts
@example([(0, 1001, 0), (0, 5, 1)])  # not-ready cut to nothing by the rounding of the shares
@example([(0, 1000, 1), (0, 3, 0)])  # the ready ones fill the capacity exactly
def test_truncated_endpoints_are_valid_and_keep_ready_hosts_first(ports: list[tuple[int, int, int]]) -> None:
    groups = _groups(ports)
    subsets, truncated = desired_subsets(groups)
    causes = validate_endpoints({"subsets": subsets}, None, CTX)
    assert not causes, causes[:3]

    kept = {(a["ip"], ready) for s in subsets for field, ready in (("addresses", True), ("notReadyAddresses", False))
            for a in s.get(field) or []}
    per_subset = [sum(len(s.get(f) or []) for f in ("addresses", "notReadyAddresses")) for s in subsets]
    everything = {(a, e.ready) for g in groups for a, e in g.endpoints.items()}
    assert kept <= everything, "an address changed readiness or came from nowhere"
    listed_ports = {p["name"] for s in subsets for p in s["ports"]}
    assert listed_ports == {g.ports[0].name for g in groups if g.endpoints}, "a port with hosts went missing"
    # before truncation: ports with equal (address, ready) sets share a subset (RepackSubsets)
    shared = {tuple(sorted((a, e.ready) for a, e in g.endpoints.items())) for g in groups if g.endpoints}
    whole = sum(len(key) for key in shared)
    whole_ready = sum(ready for key in shared for _, ready in key)
    assert len(subsets) == len(shared)
    assert truncated == (whole > MAX_CAPACITY)
    total = sum(per_subset)
    if not truncated:
        assert total == whole
    else:
        assert total <= MAX_CAPACITY
        ready_kept = sum(len(s.get("addresses") or []) for s in subsets)
        # ready first: only the one-address floors of other subsets may take a ready host's place
        assert ready_kept >= min(whole_ready, MAX_CAPACITY - len(subsets))
