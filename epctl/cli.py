"""The ``epctl`` command: one subcommand per front-end (see DESIGN.md section 1).

Flags have ``EPCTL_*`` env equivalents (see :mod:`epctl.config`). Heavy modules are imported inside
each subcommand so that, for example, ``epctl version`` or the sidecar never load probe code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

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

    check = sub.add_parser("check", help="probe the hosts of ClusterEndpoint manifests from this machine",
                           description="Validate ClusterEndpoint manifests, probe every host from here, and print "
                           "health plus the EndpointSlice conditions epctl would publish. Exit 0: all healthy, "
                           "1: something unhealthy, 2: invalid input.")
    _common(check)
    check.add_argument("-f", "--filename", action="append", required=True, dest="files", metavar="FILE",
                       help="manifest file (multi-document YAML); '-' reads stdin; repeatable")
    mode = check.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="probe until every check is decided, then exit "
                      "(default)")
    mode.add_argument("--watch", action="store_true", help="keep probing at the real periods; print transitions")
    add_flag(check, "--output", short="-o", default="table", choices=["table", "json"], help="report format")
    add_flag(check, "--allow-loopback", default=False, boolean=True,
             help="accept 127.0.0.0/8 hosts (useful to try local servers; a cluster refuses them in slices)")
    add_flag(check, "--duration", default=0.0, type=float, help="with --watch: stop after this many seconds "
             "(0: run until interrupted)")

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
    if args.command == "check":
        from epctl.check import run_check

        code: int = run_async(run_check(args.files, watch=args.watch, output=args.output,
                                        allow_loopback=args.allow_loopback, duration=args.duration), interrupted=0)
        return code
    if args.command == "dev-apiserver":
        from epctl.testing.kubeapi import serve_forever

        run_async(serve_forever(args.port, args.allow_loopback, args.write_kubeconfig), interrupted=0)
        return 0
    return 2


def run_async(main: Coroutine[Any, Any, Any], interrupted: int = 130) -> Any:
    """Run ``main`` on uvloop when it is installed (DESIGN.md section 6), else the default loop."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    except KeyboardInterrupt:
        return interrupted


if __name__ == "__main__":
    sys.exit(main())
