"""Settings resolution: command-line flag, then ``EPCTL_*`` (or a seed tool's) env var, then default.

Each flag is declared once with :func:`add_flag`; the env var name is derived from the flag
(``--log-level`` -> ``EPCTL_LOG_LEVEL``) so the two can never drift apart, and the help text says
which variable applies. The configuration reference in the README is generated from these too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FlagDoc:
    command: str
    flag: str
    envs: tuple[str, ...]
    default: Any
    help: str


FLAGS: list[FlagDoc] = []  # every declared flag, in order: the source of the README reference


def env_name(flag: str) -> str:
    return "EPCTL_" + flag.lstrip("-").upper().replace("-", "_")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def add_flag(parser: argparse.ArgumentParser, flag: str, *, default: Any = None, type: Callable[[str], Any] = str,
             help: str = "", choices: Sequence[Any] | None = None, env: Sequence[str] = (),
             boolean: bool = False, short: str | None = None, aliases: Sequence[str] = ()) -> None:
    """Declare ``flag`` with ``EPCTL_<FLAG>`` (and any extra ``env`` names) as its env equivalents.

    A set env var replaces the default, so an explicit flag still wins. An env value that does
    not parse, or is not one of ``choices``, is reported by argparse like a bad flag value.
    ``aliases`` are older spellings still accepted (never shown in the README reference).
    """
    names = [env_name(flag), *env]
    FLAGS.append(FlagDoc(parser.prog.split()[-1], flag, tuple(names), default, help))
    value = default
    for name in names:
        if name in os.environ:
            raw = os.environ[name]
            try:
                value = _parse_bool(raw) if boolean else type(raw)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
                parser.error(f"{name}={raw!r}: {err}")
            if choices is not None and value not in choices:
                parser.error(f"{name}={raw!r}: must be one of {', '.join(map(str, choices))}")
            break
    env_help = " | ".join(names)
    text = f"{help} [env: {env_help}; default: {default!r}]"
    names_on_cli = [short, flag, *aliases] if short else [flag, *aliases]
    if boolean:
        parser.add_argument(*names_on_cli, default=value, action=argparse.BooleanOptionalAction, help=text)
    else:
        parser.add_argument(*names_on_cli, default=value, type=type, help=text, choices=choices)
