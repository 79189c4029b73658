"""What one probe run says. Probers return these and never raise."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    reason: str
    duration: float  # seconds
    timed_out: bool = False  # no answer within the timeout (vs. an answer that said no)
    role: str = ""  # database role probes: "primary" or "replica" as the host answered ("" = no answer)
    generation: int = 0  # with role "primary": its order among primaries (roles.arbitrate)

    @staticmethod
    def timeout(duration: float, timeout: float, reason: str = "") -> ProbeResult:
        return ProbeResult(False, reason or f"timeout after {timeout:g}s", duration, timed_out=True)


def describe_os_error(err: OSError) -> str:
    """Short, stable reasons (they end up in status and Events, so no addresses or errno noise)."""
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset"
    return (err.strerror or type(err).__name__).lower()
