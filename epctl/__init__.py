"""epctl: keeps Kubernetes Services pointed at healthy endpoints that live outside the Pod network."""

__version__ = "0.1.0"
