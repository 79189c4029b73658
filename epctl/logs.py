"""Logging: one line per event, as text for humans or JSON for log pipelines.

Secrets never reach a log line because nothing that formats credentials calls the logger with
them; this module only decides the shape of the line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts":..., "level":..., "logger":..., "msg":..., <extra fields>}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).replace("\n", " | ")
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger>: <msg> key=value ...`` on one line (tracebacks folded)."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _RESERVED)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += " " + extras
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


# Libraries whose info/debug lines describe their internals, not epctl's decisions (grpc's "Loaded running
# loop", keystoneauth's request dumps, aiohttp's access lines): warnings and errors still show.
QUIET_LIBRARIES = ("grpc", "asyncio", "aiohttp", "urllib3", "keystoneauth", "openstack", "stevedore",
                   "kubernetes_asyncio", "hpack", "requests", "dogpile", "os_service_types")


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
