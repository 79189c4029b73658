"""The test API server's store used synchronously (no running event loop: its controllers then run at
once, epctl.testing.kcm): the garbage collector must work there too."""

from __future__ import annotations

from epctl.testing.apistore import ObjectStore


def test_a_store_used_without_a_loop_collects_every_dependent_of_a_deleted_owner() -> None:
    store = ObjectStore()
    rt = store.type_for("", "v1", "configmaps")
    owner = store.create(rt, "default", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}).obj
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    for i in range(3):
        store.create(rt, "default", {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": f"dep{i}", "ownerReferences": [ref]}})
    store.delete(rt, "default", "owner")  # the collector runs inside this call
    assert not store.objects[("", "configmaps")]
