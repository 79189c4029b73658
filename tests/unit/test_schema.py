from __future__ import annotations

from epctl.testing.schema import prune_and_default, validate

SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["ports"],
            "properties": {
                "period": {"type": "integer", "default": 10, "minimum": 1},
                "ports": {"type": "array", "maxItems": 2, "items": {
                    "type": "object", "properties": {
                        "name": {"type": "string", "pattern": "^[a-z]+$"},
                        "protocol": {"type": "string", "enum": ["TCP", "UDP"], "default": "TCP"},
                        "target": {"x-kubernetes-int-or-string": True},
                    }}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    },
}


def test_prune_default_reports_unknown_fields() -> None:
    doc = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
           "spec": {"ports": [{"name": "a", "junk": 1}], "extra": {"anything": 1}, "nope": 2, "labels": {"k": "v"}}}
    out, unknown = prune_and_default(doc, SCHEMA)
    assert unknown == ["spec.ports[0].junk", "spec.nope"]
    assert out["spec"] == {"ports": [{"name": "a", "protocol": "TCP"}], "extra": {"anything": 1}, "period": 10,
                           "labels": {"k": "v"}}
    assert out["metadata"] == {"name": "a"}


def test_validate_collects_every_problem_with_field_paths() -> None:
    doc = {"spec": {"period": 0, "ports": [{"name": "A", "protocol": "SCTP", "target": 1.5}, {}, {}],
                    "labels": {"k": 1}}}
    causes = validate(doc, SCHEMA)
    messages = [f"{c.field}: {c.message}" for c in causes]
    assert "spec.period: Invalid value: 0: spec.period in body should be greater than or equal to 1" in messages
    assert "spec.ports: Too many: 3: must have at most 2 items" in messages
    assert any(m.startswith("spec.ports[0].name: Invalid value: \"A\"") for m in messages)
    assert any(m.startswith('spec.ports[0].protocol: Unsupported value: "SCTP"') for m in messages)
    assert any(m.startswith("spec.ports[0].target: Invalid value") for m in messages)
    assert any(m.startswith("spec.labels.k: Invalid value") for m in messages)
    assert validate({"spec": {}}, SCHEMA)[0].field == "spec.ports"
