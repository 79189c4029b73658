"""Everything that talks to the Kubernetes API server (and nothing else does)."""
