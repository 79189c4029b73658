"""The ``epctl`` command: one subcommand per front-end (see DESIGN.md section 1).

Flags have ``EPCTL_*`` env equivalents (see :mod:`epctl.config`). Heavy modules are imported inside
each subcommand so that, for example, ``epctl version`` or the sidecar never load probe code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from epctl import __version__
from epctl.config import add_flag
from epctl.logs import setup_logging


def _common(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--log-level", default="info", choices=["debug", "info", "warning", "error"],
             help="least severe log level printed")
    add_flag(parser, "--log-format", default="text", choices=["text", "json"], help="log line format")


def _kube(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--kubeconfig", default=None, env=["KUBECONFIG"],
             help="kubeconfig file; in-cluster service-account config when unset")
    add_flag(parser, "--context", default=None, help="kubeconfig context (default: current-context)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epctl", description="Keeps Kubernetes Services pointed at healthy "
                                     "endpoints that live outside the Pod network.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    version = sub.add_parser("version", help="print the epctl version")
    _common(version)

    dev = sub.add_parser("dev-apiserver", help="run the in-memory Kubernetes API server (for development)")
    _common(dev)
    add_flag(dev, "--port", default=6443, type=int, help="TCP port on 127.0.0.1 (0: any free port)")
    add_flag(dev, "--allow-loopback", default=True, boolean=True,
             help="accept 127.0.0.0/8 addresses in EndpointSlices (a real server refuses them)")
    add_flag(dev, "--write-kubeconfig", default=None, help="also write the kubeconfig to this path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    if args.command == "version":
        print(f"epctl {__version__}")
        return 0
    if args.command == "dev-apiserver":
        from epctl.testing.kubeapi import serve_forever

        try:
            asyncio.run(serve_forever(args.port, args.allow_loopback, args.write_kubeconfig))
        except KeyboardInterrupt:
            pass
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
