"""Real local stand-ins for the outside world: a Kubernetes API server and probe backends."""
