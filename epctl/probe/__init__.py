"""Health probes for external hosts, and the scheduler that runs thousands of them.

Only this package opens sockets to the hosts epctl manages (docs/design.md section 2).
"""
