"""The ``epctl`` command: one subcommand per front-end (see docs/design.md section 1).

Flags have ``EPCTL_*`` env equivalents (see :mod:`epctl.config`). Heavy modules are imported inside
each subcommand so that, for example, ``epctl version`` or the sidecar never load probe code.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
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


MANAGE_ENDPOINTS_HELP = ("also write each managed Service's v1 Endpoints (ready -> addresses, failing -> "
                         "notReadyAddresses, skip-mirror): replaces a left-over Endpoints that Kubernetes would "
                         "otherwise mirror into stale slices, and serves consumers that still read Endpoints")


def _controller_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--namespace", default=None, help="watch one namespace (default: all)")
    add_flag(parser, "--metrics-addr", default=":8080", help="address of /metrics, /healthz and /readyz")
    add_flag(parser, "--batch-delay", default=0.1, type=float, help="seconds of quiet before a target is written")
    add_flag(parser, "--max-batch-delay", default=1.0, type=float,
             help="seconds a changed target waits at most before it is written")
    add_flag(parser, "--max-endpoints-per-slice", default=100, type=_slice_size, help="endpoints per EndpointSlice "
             "(1-1000)")
    add_flag(parser, "--max-concurrent-probes", default=1000, type=int, help="probes in flight at once")
    add_flag(parser, "--max-probe-rate", default=0.0, type=float, help="probes started per second at most, to bound "
             "the traffic to external hosts (0: as many as the CPU affords while API work keeps priority)")
    add_flag(parser, "--write-concurrency", default=8, type=int,
             help="targets written at once (2x as many write slots, slices before Endpoints; status patches "
             "and Events: half as many each)")
    add_flag(parser, "--resolve-interval", default=30.0, type=float, help="seconds between DNS re-resolutions")
    add_flag(parser, "--terminating-grace-period", default=0.0, type=float,
             help="seconds a host removed from a ClusterEndpoint (or gone from its discovery) stays published "
                  "terminating (ready=false) before it is removed, so connections to it can finish (0: removed at "
                  "once; a planned removal is better drained first: epctl drain)")
    add_flag(parser, "--topology-hints", default=True, boolean=True,
             help="watch Nodes and write topology hints (hints.forZones) for Services that ask for topology-aware "
                  "routing (needs list/watch on nodes: off in the namespaced overlay)")
    add_flag(parser, "--allow-loopback", default=False, boolean=True, env=["EPCTL_ALLOW_LOOPBACK_HOSTS"],
             aliases=["--allow-loopback-hosts"],
             help="accept 127.0.0.0/8 hosts (development only: real API servers refuse them in slices)")
    add_flag(parser, "--manage-endpoints", default=True, boolean=True, help=MANAGE_ENDPOINTS_HELP)
    add_flag(parser, "--per-target-metrics", default=False, boolean=True,
             help="also export per-check probe series (one per ClusterEndpoint, port and address)")
    add_flag(parser, "--openstack-timeout", default=10.0, type=float,
             help="seconds an OpenStack API request may take (discovery)")
    add_flag(parser, "--openstack-max-backoff", default=300.0, type=float,
             help="longest wait between retries of a failing OpenStack poll")
    add_flag(parser, "--leader-elect", default=False, boolean=True,
             help="run several replicas: only the holder of a coordination.k8s.io Lease probes and writes")
    add_flag(parser, "--shard", default=False, boolean=True,
             help="run several replicas that each probe and write a share of the targets, owned through one "
                  "member Lease per replica (rendezvous hashing); replaces --leader-elect")
    add_flag(parser, "--leader-election-namespace", default=None,
             help="namespace of the Lease (default: the pod's own namespace)")
    add_flag(parser, "--leader-election-id", default="epctl-controller",
             help="name of the Lease; with --shard, the group label of the member Leases")
    add_flag(parser, "--lease-duration", default=15.0, type=float, help="seconds a Lease is valid without renewal")
    add_flag(parser, "--renew-deadline", default=10.0, type=float,
             help="seconds of failed renewals after which the leader steps down (< lease duration)")
    add_flag(parser, "--retry-period", default=2.0, type=float, help="seconds between acquire/renew attempts")
    # endpoint-copier's one-pair flag mode (its env names are accepted too)
    add_flag(parser, "--managed-endpoint-name", default=None, env=["MANAGED_ENDPOINT_NAME"],
             help="mirror into this Service (enables the one-pair flag mode)")
    add_flag(parser, "--managed-endpoint-namespace", default="default", env=["MANAGED_ENDPOINT_NAMESPACE"],
             help="namespace of --managed-endpoint-name")
    add_flag(parser, "--default-endpoint-name", default="kubernetes", env=["DEFAULT_ENDPOINT_NAME"],
             help="the Service mirrored in flag mode")
    add_flag(parser, "--default-endpoint-namespace", default="default", env=["DEFAULT_ENDPOINT_NAMESPACE"],
             help="namespace of --default-endpoint-name")


def _manager_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--endpoint-type", default="openstack", env=["ENDPOINT_TYPE"], choices=["openstack"],
             help="where endpoints come from")
    add_flag(parser, "--sync-period", default=5.0, type=float, env=["SYNC_PERIOD"],
             help="seconds between OpenStack polls")
    add_flag(parser, "--k8s-namespace", default=None, env=["K8S_NAMESPACE"], help="namespace of the Service (required)")
    add_flag(parser, "--k8s-endpoint", default=None, env=["K8S_ENDPOINT"],
             help="the selector-less Service whose EndpointSlices are managed (required)")
    add_flag(parser, "--k8s-api-server", default=None, env=["K8S_API_SERVER"],
             help="API server host:port (default: --kubeconfig, else in-cluster)")
    add_flag(parser, "--k8s-api-token", default=None, env=["K8S_API_TOKEN"],
             help="bearer token (default: the pod's service-account token)")
    add_flag(parser, "--k8s-ca-file", default=None, env=["K8S_CA_FILE"],
             help="CA bundle verifying --k8s-api-server (default: the service-account CA)")
    add_flag(parser, "--insecure-skip-tls-verify", default=False, boolean=True,
             help="do not verify the API server's certificate (never the default)")
    add_flag(parser, "--filter-name", default=None, env=["FILTER_NAME"],
             help="server name regex, matched at the start of the name")
    add_flag(parser, "--filter-metadata", default=None, env=["FILTER_METADATA"],
             help="space-separated keyregex:valueregex metadata filters, all must match")
    add_flag(parser, "--filter-status", default="ACTIVE", env=["FILTER_STATUS"],
             help="comma-separated Nova server statuses to include")
    add_flag(parser, "--network", default=None, env=["FILTER_NETWORK"],
             help="only addresses on this network (default: any; a VM's endpoint.network.name metadata wins)")
    add_flag(parser, "--address-kind", default="fixed", choices=["fixed", "floating", "any"],
             help="fixed or floating addresses")
    add_flag(parser, "--ip-version", default=4, type=int, choices=[4, 6], help="IP version of the addresses")
    add_flag(parser, "--terminating-grace-period", default=0.0, type=float,
             help="seconds a server gone from discovery (deleted, shut off) stays published terminating "
                  "(ready=false) before it is removed, so connections to it can finish (0: removed at once)")
    add_flag(parser, "--keep-last-on-empty", default=False, boolean=True,
             help="keep the last endpoints when OpenStack answers with no matching server")
    add_flag(parser, "--os-auth-url", default=None, env=["OS_AUTH_URL"], help="Keystone URL (required)")
    add_flag(parser, "--os-username", default=None, env=["OS_USERNAME"], help="OpenStack user")
    add_flag(parser, "--os-password", default=None, env=["OS_PASSWORD"],
             help="OpenStack password (prefer the env var: flags show in process lists)")
    add_flag(parser, "--os-project", default=None, env=["OS_PROJECT"],
             help="OpenStack project name (other OS_* variables are read from the environment too)")
    add_flag(parser, "--probe", default="none", help="health check: none, tcp, http:/path, https:/path, "
             "udp[:data] or grpc[:service]")
    add_flag(parser, "--probe-period", default=10, type=int, help="seconds between probes of one endpoint")
    add_flag(parser, "--probe-timeout", default=1, type=int, help="seconds a probe may take")
    add_flag(parser, "--probe-failure-threshold", default=3, type=int, help="consecutive failures to mark not ready")
    add_flag(parser, "--probe-success-threshold", default=1, type=int, help="consecutive successes to mark ready")
    add_flag(parser, "--metrics-addr", default=":8080", help="address of /metrics, /healthz and /readyz")
    add_flag(parser, "--openstack-timeout", default=10.0, type=float, help="seconds an OpenStack API request may take")
    add_flag(parser, "--allow-loopback", default=False, boolean=True, env=["EPCTL_ALLOW_LOOPBACK_HOSTS"],
             aliases=["--allow-loopback-hosts"], help="accept 127.0.0.0/8 addresses (development only)")
    add_flag(parser, "--manage-endpoints", default=True, boolean=True, help=MANAGE_ENDPOINTS_HELP)


def _run_manager(args: argparse.Namespace) -> int:
    from epctl.api.spec import ProbeTiming
    from epctl.sources.manager import (
        ManagerConfigError,
        ManagerSettings,
        cluster_config,
        parse_probe,
        run_manager,
        seed_query,
    )
    from epctl.sources.openstack_auth import CredentialsError

    if not args.k8s_namespace or not args.k8s_endpoint:
        print("epctl manager: K8S_NAMESPACE (--k8s-namespace) and K8S_ENDPOINT (--k8s-endpoint) are required",
              file=sys.stderr)
        return 2
    os_vars = dict(os.environ)
    for name, value in (("OS_AUTH_URL", args.os_auth_url), ("OS_USERNAME", args.os_username),
                        ("OS_PASSWORD", args.os_password), ("OS_PROJECT", args.os_project)):
        if value:
            os_vars[name] = value
    try:
        settings = ManagerSettings(
            namespace=args.k8s_namespace, service=args.k8s_endpoint, endpoint_type=args.endpoint_type,
            sync_period=args.sync_period, filter_name=args.filter_name, filter_metadata=args.filter_metadata,
            filter_status=tuple(s.strip() for s in args.filter_status.split(",") if s.strip()),
            network=args.network, address_kind=args.address_kind, ip_version=args.ip_version,
            keep_last_on_empty=args.keep_last_on_empty, probe=parse_probe(args.probe),
            terminating_grace=args.terminating_grace_period,
            timing=ProbeTiming(timeout_seconds=args.probe_timeout, period_seconds=args.probe_period,
                               success_threshold=args.probe_success_threshold,
                               failure_threshold=args.probe_failure_threshold),
            metrics_addr=args.metrics_addr or None, allow_loopback_hosts=args.allow_loopback,
            openstack_timeout=args.openstack_timeout, manage_endpoints=args.manage_endpoints)
        seed_query(settings)  # bad filters fail here, before anything connects
        config = (cluster_config(args.k8s_api_server, args.k8s_api_token, args.k8s_ca_file,
                                 args.insecure_skip_tls_verify)
                  if args.k8s_api_server or args.k8s_api_token else None)
        code: int = run_async(run_manager(settings, config, os_vars, args.kubeconfig, args.context,
                                          args.insecure_skip_tls_verify))
    except (ManagerConfigError, CredentialsError) as exc:
        print(f"epctl manager: {exc}", file=sys.stderr)
        return 2
    return code


def _pod_namespace() -> str | None:
    from epctl.sidecar import default_namespace

    return default_namespace()


def _pod_owner() -> dict[str, str] | None:
    """The Pod we run in, from the downward API (POD_NAME, POD_UID in manifests/base/deployment.yaml):
    the owner of our member Lease, so the garbage collector removes it with the Pod."""
    name, uid = os.environ.get("POD_NAME"), os.environ.get("POD_UID")
    return {"name": name, "uid": uid, "namespace": _pod_namespace() or ""} if name and uid else None


def _slice_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number between 1 and 1000, got {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000 (the EndpointSlice API's limit), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epctl", description="Keeps Kubernetes Services pointed at healthy "
                                     "endpoints that live outside the Pod network.")
    parser.add_argument("--version", action="version", version=f"epctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    version = sub.add_parser("version", help="print the epctl version", description="Print the epctl version.")
    _common(version)

    check = sub.add_parser("check", help="probe the hosts of ClusterEndpoint manifests from this machine",
                           description="Validate ClusterEndpoint manifests, probe every host from here, and print "
                           "health plus the EndpointSlice conditions epctl would publish. Exit 0: all healthy, "
                           "1: something unhealthy, 2: invalid input, 130: interrupted.")
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
    add_flag(check, "--duration", default=0.0, type=float, help="stop after this many seconds counted from the "
             "start (0: until decided, or with --watch until interrupted)")

    importer = sub.add_parser("import", help="convert what the old tools left (endpoints-operator ClusterEndpoints, "
                              "Service + Endpoints pairs) into epctl ClusterEndpoints",
                              description="Read manifests (-f) or the cluster and print the epctl ClusterEndpoints "
                              "that take over what endpoints-operator / kube-endpoints or hand-written Service + "
                              "Endpoints pairs left behind (with epctl.io/adopt), plus what could not be converted "
                              "and why. Skips (with a note) Service + Endpoints pairs another controller manages. "
                              "Writes nothing unless --apply, which also removes endpoints-operator's finalizer "
                              "from each old object whose replacement owns (or adopts) its Service; every other "
                              "old object is left as it was. Exit 0: all converted (and applied), 1: some not "
                              "(run it again once fixed), 2: bad input.")
    _common(importer)
    _kube(importer)
    importer.add_argument("-f", "--filename", action="append", default=[], dest="files", metavar="FILE",
                          help="manifest file (multi-document YAML); '-' reads stdin; repeatable (default: read "
                          "the cluster)")
    importer.add_argument("-n", "--namespace", default=None, help="only this namespace (default: all; "
                          "kube-system only when named here)")
    importer.add_argument("--include", action="append", default=[], metavar="NAMESPACE/NAME",
                          help="convert this Service + Endpoints pair although another controller seems to "
                          "manage it (managed-by label, controller ownerReference, kube-system); repeatable")
    importer.add_argument("--apply", action="store_true", help="create the ClusterEndpoints in the cluster and "
                          "remove the old objects' finalizers where the replacement owns the Service")
    add_flag(importer, "--allow-loopback", default=False, boolean=True,
             help="accept 127.0.0.0/8 hosts (development clusters such as epctl dev-apiserver)")

    for verb in ("drain", "undrain"):
        into = "into" if verb == "drain" else "out of"
        cmd = sub.add_parser(verb, help=f"put hosts of a ClusterEndpoint {into} maintenance",
                             description=f"Put hosts of a ClusterEndpoint {into} maintenance by writing the "
                             "annotation epctl.io/drain, as `kubectl annotate` would (a merge patch guarded by the "
                             "resourceVersion read). A drained host stays probed and is published ready=false, "
                             "serving=<probe>, terminating=true: no new connections, existing ones finish. "
                             "Exit 0: done (or already so), 1: refused, 2: API error.")
        _common(cmd)
        _kube(cmd)
        cmd.add_argument("name", metavar="CLUSTERENDPOINT", help="the ClusterEndpoint's name")
        cmd.add_argument("hosts", metavar="HOST", nargs="+",
                         help="a host as written in spec.ports[].hosts, one of its addresses, or a discovered "
                              "server's name")
        cmd.add_argument("-n", "--namespace", default="default", help="its namespace (default: default)")
        add_flag(cmd, "--allow-loopback", default=False, boolean=True,
                 help="accept 127.0.0.0/8 hosts (development clusters such as epctl dev-apiserver)")

    controller = sub.add_parser("controller", help="run the ClusterEndpoint controller",
                                description="Watch ClusterEndpoints; own their Services and EndpointSlices; probe "
                                "every host; report health in status and Events.")
    _common(controller)
    _kube(controller)
    _controller_flags(controller)

    demo = sub.add_parser("demo", help="run the controller against an embedded API server and local backends",
                          description="Start an in-memory API server, local TCP/HTTP/UDP/gRPC backends and the "
                          "controller; apply examples/demo.yaml; stop the HTTP backend for a while and print what "
                          "epctl publishes. Needs nothing but Python. Exit 0 when the demo ends healthy.")
    _common(demo)
    add_flag(demo, "--duration", default=30.0, type=float, help="stop after this many seconds counted from the "
             "start (ignored with --serve)")
    add_flag(demo, "--serve", default=False, boolean=True,
             help="keep running until interrupted and print a kubeconfig for kubectl")

    sidecar = sub.add_parser("sidecar", help="serve one Service's endpoints as JSON on pod-local HTTP",
                             description="kubernetes-pod-discovery compatible: GET /endpoints returns the "
                             "Service's endpoints (v1 Endpoints shape), /health reports sync and watch state.")
    _common(sidecar)
    _kube(sidecar)
    add_flag(sidecar, "--service-name", default=None, env=["KUBERNETES_POD_DISCOVERY_SERVICE_NAME"],
             help="the Service whose endpoints are served (required)")
    add_flag(sidecar, "--namespace", default=None, env=["KUBERNETES_POD_DISCOVERY_NAMESPACE"],
             help="its namespace (default: the pod's own, from the service-account mount)")
    add_flag(sidecar, "--listen-port", default=8080, type=int, env=["KUBERNETES_POD_DISCOVERY_LISTEN_PORT"],
             help="HTTP port")
    add_flag(sidecar, "--listen-address", default="127.0.0.1",
             help="HTTP address (containers of the pod reach 127.0.0.1)")
    add_flag(sidecar, "--source", default="endpointslices", choices=["endpointslices", "endpoints"],
             help="watch the Service's EndpointSlices, or its legacy Endpoints object")

    manager = sub.add_parser("manager", help="kube-endpoint-manager drop-in: one Service's endpoints from OpenStack",
                             description="Fill the EndpointSlices of one pre-created selector-less Service with "
                             "the addresses of OpenStack servers (same env vars as kube-endpoint-manager), "
                             "optionally health-checked.")
    _common(manager)
    _kube(manager)
    _manager_flags(manager)

    dev = sub.add_parser("dev-apiserver", help="run the in-memory Kubernetes API server (for development)",
                         description="Serve epctl's in-memory Kubernetes API server (HTTPS, with garbage collection "
                         "and EndpointSlice mirroring) on 127.0.0.1 and print a kubeconfig for kubectl and epctl. "
                         "State lives in memory and is gone when it stops.")
    _common(dev)
    add_flag(dev, "--port", default=6443, type=int, help="TCP port on 127.0.0.1 (0: any free port)")
    add_flag(dev, "--allow-loopback", default=True, boolean=True,
             help="accept 127.0.0.0/8 addresses in EndpointSlices (a real server refuses them)")
    add_flag(dev, "--write-kubeconfig", default=None, help="also write the kubeconfig to this path")
    return parser


def flag_reference() -> str:
    """The README's configuration reference, generated from the flag declarations."""
    from epctl.config import FLAGS

    FLAGS.clear()
    build_parser()
    lines: list[str] = []
    for command in dict.fromkeys(f.command for f in FLAGS):
        lines += [f"`epctl {command}`", "", "| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
        for f in (x for x in FLAGS if x.command == command):
            envs = ", ".join(f"`{e}`" for e in f.envs)
            default = "—" if f.default in (None, "") else f"`{f.default}`"
            lines.append(f"| `{f.flag}` | {envs} | {default} | {f.help} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A startup problem (no kubeconfig, a port in use, ...) is one line saying what to
    do, and exit code 2; the traceback only at ``--log-level debug``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    from epctl.kube.config import ConfigError
    from epctl.lifecycle import StartupError

    try:
        return _dispatch(args)
    except (StartupError, ConfigError) as err:
        logging.getLogger("epctl").debug("startup failed", exc_info=True)
        print(f"epctl {args.command}: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "version":
        print(f"epctl {__version__}")
        return 0
    if args.command == "check":
        from epctl.check import run_check

        code: int = run_async(run_check(args.files, watch=args.watch, output=args.output,
                                        allow_loopback=args.allow_loopback, duration=args.duration))
        return code
    if args.command == "import":
        from epctl.importer import run_import
        from epctl.kube.config import ConfigError

        try:
            code = run_async(run_import(args.files, kubeconfig=args.kubeconfig, context=args.context,
                                        namespace=args.namespace, apply_changes=args.apply,
                                        allow_loopback=args.allow_loopback, include=args.include))
        except (ConfigError, OSError) as err:
            print(f"epctl import: {err}", file=sys.stderr)
            return 2
        return code
    if args.command in ("drain", "undrain"):
        from epctl.drain import run_drain
        from epctl.kube.config import ConfigError

        try:
            code = run_async(run_drain(args.name, args.hosts, undrain=args.command == "undrain",
                                       namespace=args.namespace, kubeconfig=args.kubeconfig, context=args.context,
                                       allow_loopback=args.allow_loopback))
        except (ConfigError, OSError) as err:
            print(f"epctl {args.command}: {err}", file=sys.stderr)
            return 2
        return code
    if args.command == "controller":
        from epctl.app import ControllerSettings, run_controller

        settings = ControllerSettings(
            namespace=args.namespace, batch_delay=args.batch_delay, max_batch_delay=args.max_batch_delay,
            max_endpoints_per_slice=args.max_endpoints_per_slice, max_concurrent_probes=args.max_concurrent_probes,
            write_concurrency=args.write_concurrency, allow_loopback_hosts=args.allow_loopback,
            manage_endpoints=args.manage_endpoints,
            resolve_interval=args.resolve_interval, metrics_addr=args.metrics_addr or None,
            mirror_pairs={(args.managed_endpoint_namespace, args.managed_endpoint_name):
                          (args.default_endpoint_namespace, args.default_endpoint_name)}
            if args.managed_endpoint_name else None,
            leader_elect=args.leader_elect, shard=args.shard, pod_owner=_pod_owner(),
            leader_election_namespace=args.leader_election_namespace or _pod_namespace() or "default",
            leader_election_id=args.leader_election_id, lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline, retry_period=args.retry_period,
            per_target_metrics=args.per_target_metrics, openstack_timeout=args.openstack_timeout,
            max_probe_rate=args.max_probe_rate,
            openstack_retry_max=args.openstack_max_backoff, terminating_grace=args.terminating_grace_period,
            topology_hints=args.topology_hints)
        code = run_async(run_controller(settings, args.kubeconfig, args.context))
        return code
    if args.command == "demo":
        from epctl.demo import run_demo

        code = run_async(run_demo(args.duration, args.serve), interrupted=0)
        return code
    if args.command == "sidecar":
        from epctl.sidecar import default_namespace, run_sidecar

        namespace = args.namespace or default_namespace()
        if not args.service_name or not namespace:
            print("epctl sidecar: --service-name (KUBERNETES_POD_DISCOVERY_SERVICE_NAME) is required, and "
                  "--namespace (KUBERNETES_POD_DISCOVERY_NAMESPACE) when not running in a pod", file=sys.stderr)
            return 2
        code = run_async(run_sidecar(args.kubeconfig, args.context, namespace, args.service_name,
                                     args.listen_address, args.listen_port, args.source), interrupted=0)
        return code
    if args.command == "manager":
        return _run_manager(args)
    if args.command == "dev-apiserver":
        from epctl.testing.kubeapi import serve_forever

        run_async(serve_forever(args.port, args.allow_loopback, args.write_kubeconfig), interrupted=0)
        return 0
    return 2


def run_async(main: Coroutine[Any, Any, Any], interrupted: int = 130) -> Any:
    """Run ``main`` on uvloop when it is installed (docs/design.md section 6), else the default loop.

    Ctrl-C (SIGINT) and SIGTERM both cancel ``main``, so every ``finally`` and ``async with`` in it runs
    (temporary files and directories are removed, servers closed) before the process exits. Commands
    whose answer an interrupt leaves incomplete exit ``interrupted`` (130, or 143 for SIGTERM, as a shell
    reports a process killed by that signal); servers pass 0, an interrupt being how they are stopped.
    """
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    terminated = False

    async def cancelled_by_sigterm() -> Any:
        nonlocal terminated
        task = asyncio.current_task()
        assert task is not None

        def on_sigterm() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(cancelled_by_sigterm())
    except KeyboardInterrupt:
        return interrupted
    except asyncio.CancelledError:
        if not terminated:
            raise
        return interrupted and 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
