"""Database role judgement and primary arbitration (pure), the CheckState veto, and the spec's
database probe fields."""

from __future__ import annotations

from epctl.api import parse_cluster_endpoint
from epctl.api.spec import DatabaseProbe, Expect, ProbeKind
from epctl.probe.credentials import Credentials, credentials_from_secret
from epctl.probe.roles import PRIMARY, REPLICA, RoleAnswer, arbitrate, judge
from epctl.probe.state import CheckState


def test_judge_against_expect_and_lag_bound() -> None:
    primary, replica = RoleAnswer(PRIMARY, generation=3), RoleAnswer(REPLICA, lag=4.0)
    assert judge(Expect.PRIMARY, None, primary) == (True, "primary (timeline 3)")
    assert judge(Expect.PRIMARY, None, replica) == (False, "is replica, expected primary")
    assert judge(Expect.REPLICA, None, primary) == (False, "is primary (timeline 3), expected replica")
    assert judge(Expect.REPLICA, 5, replica) == (True, "replica, 4s behind")
    assert judge(Expect.REPLICA, 3, replica) == (False, "replica: 4s behind, bound is 3s")
    assert judge(Expect.ANY, 3, replica)[0] is False and judge(Expect.ANY, 3, primary)[0] is True
    broken = RoleAnswer(REPLICA, link="not streaming")
    assert judge(Expect.REPLICA, None, broken) == (True, "replica (not streaming)")  # no bound asked
    assert judge(Expect.REPLICA, 60, broken) == (False, "replica (not streaming): replication lag unknown, "
                                                        "bound is 60s")


def test_arbitrate_publishes_one_primary_or_none() -> None:
    assert arbitrate({}) == {} and arbitrate({"a": 0}) == {}
    newer = arbitrate({"a": 1, "b": 2})
    assert list(newer) == ["a"] and "b claims primary on a newer timeline (2 > 1)" in newer["a"]
    assert set(arbitrate({"a": 0, "b": 0})) == {"a", "b"}  # no order (Redis, MySQL): neither
    assert set(arbitrate({"a": 2, "b": 2, "c": 1})) == {"a", "b", "c"}  # a tie at the top: none
    assert "2 other hosts also claim primary" in arbitrate({"a": 0, "b": 0, "c": 0})["a"]


def test_a_veto_overrides_the_thresholds_at_once_and_lifts_cleanly() -> None:
    state = CheckState(1, 3, healthy=True)
    assert state.veto("not published: split") and state.healthy is False and state.passing is True
    assert state.reason == "not published: split"
    assert not state.record(True, "primary")  # still vetoed: results alone do not publish it
    assert state.veto("") and state.healthy is True
    assert not state.record(False, "x") and state.healthy is True  # thresholds as before
    fresh = CheckState(1, 3)
    assert not fresh.veto("v") and fresh.healthy is None  # an undecided check stays undecided


def test_database_probe_fields_parse_and_typos_are_errors() -> None:
    def doc(block: dict[str, object], kind: str = "postgres") -> dict[str, object]:
        return {"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": "db"},
                "spec": {"ports": [{"name": "pg", "port": 5432, "hosts": ["10.0.0.1"], kind: block}]}}

    spec, errors = parse_cluster_endpoint(doc({"expect": "replica", "maxLagSeconds": 30, "secretRef": {"name": "s"},
                                               "database": "app", "tls": {"serverName": "db.example.com"}}))
    assert errors == [] and spec is not None
    assert spec.ports[0].probe == DatabaseProbe(ProbeKind.POSTGRES, Expect.REPLICA, 30, "s", "app", None, True,
                                                "db.example.com")
    _, errors = parse_cluster_endpoint(doc({"expect": "master", "maxLagSecond": 3}))
    assert [str(e) for e in errors] == [
        'unknown field "spec.ports[0].postgres.maxLagSecond" (did you mean "maxLagSeconds"?)',
        "spec.ports[0].postgres.expect: must be primary, replica or any, got 'master'"]
    _, errors = parse_cluster_endpoint(doc({"database": "0"}, kind="redis"))
    assert [str(e) for e in errors] == ['unknown field "spec.ports[0].redis.database"']
    _, errors = parse_cluster_endpoint(doc({"expect": "primary", "maxLagSeconds": 5,
                                            "tls": {"serverName": "x", "insecureSkipVerify": True}}, kind="mysql"))
    assert sorted(str(e) for e in errors) == [
        "spec.ports[0].mysql.maxLagSeconds: applies to replicas: use it with expect replica or any",
        "spec.ports[0].mysql.tls: serverName and insecureSkipVerify contradict each other: pick one"]


def test_credentials_never_show_their_values() -> None:
    creds = credentials_from_secret({"username": b"u", "password": b"pw-123", "ca.crt": b"PEM"})
    assert creds == Credentials("u", "pw-123", "PEM")
    assert "pw-123" not in repr(creds) and "u" not in repr(creds).replace("Credentials", "")
