"""Producers of desired state: each turns some input (a CRD, a Service, OpenStack) into targets."""
