"""What database role probes authenticate with, and the errors they may show. Pure.

Its own module so the drivers (db_*) and the prober that loads them share these types without an
import cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Credentials:
    """What a probe Secret holds. ``repr`` shows no value, so a stray log line leaks nothing."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    ca: str = field(default="", repr=False)  # PEM


class CredentialsError(Exception):
    """A Secret could not be read; the message is safe for status and Events (no values)."""


class DatabaseError(Exception):
    """A driver said no; the message is a short, secret-free reason for status."""


# (namespace, Secret name) -> its credentials; raises CredentialsError
CredentialSource = Callable[[str, str], Awaitable[Credentials]]


def credentials_from_secret(data: dict[str, bytes]) -> Credentials:
    """A Secret's decoded ``data`` as Credentials (keys username, password, ca.crt; all optional)."""
    def text(key: str) -> str:
        return data.get(key, b"").decode("utf-8", "replace")
    return Credentials(text("username"), text("password"), text("ca.crt"))
