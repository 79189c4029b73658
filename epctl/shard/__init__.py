"""Shard ownership: which replica probes and writes which target (docs/design.md section 8).

``ring`` is pure (owners, liveness, the handover rule); ``member`` renews this replica's Lease and
reads the others'.
"""
