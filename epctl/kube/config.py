"""Where the API server is and how to authenticate: kubeconfig files and the in-cluster account.

The common cases are read here directly (server, CA, bearer token, token file, client
certificates, tls-server-name), which keeps a sidecar small: kubernetes_asyncio imports every API
model (~38 MB). Kubeconfigs with ``exec`` or ``auth-provider`` credentials (cloud plugins) are
handed to kubernetes_asyncio's loader, imported only then, whose token refresh we call per request.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import yaml

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REREAD_SECONDS = 60.0  # projected service-account tokens rotate; re-read the file this often


class ConfigError(ValueError):
    """The kubeconfig or in-cluster environment is unusable; the message says why."""


@dataclass
class ClusterConfig:
    server: str
    ca_file: str | None = None
    ca_data: str | None = None  # PEM
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None  # PEM from client-certificate-data (kept in memory, see client_cert_chain)
    key_data: bytes | None = None  # PEM from client-key-data
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    token_provider: Callable[[], Awaitable[str | None]] | None = None  # returns a full Authorization value
    token_reread_seconds: float = TOKEN_REREAD_SECONDS
    _token_read_at: float = 0.0

    async def authorization(self) -> str | None:
        """The Authorization header value for the next request (re-reading rotated tokens)."""
        if self.token_provider is not None:
            return await self.token_provider()
        if self.token_file and time.monotonic() - self._token_read_at > self.token_reread_seconds:
            self._reread_token(self.token_file)
        return f"Bearer {self.token}" if self.token else None

    def _reread_token(self, path: str) -> None:
        """A few hundred bytes from a local tmpfs once a minute: not worth a thread hop."""
        try:
            with open(path, encoding="utf-8") as f:
                self.token = f.read().strip()
            self._token_read_at = time.monotonic()
        except OSError as err:
            if not self.token:
                raise ConfigError(f"cannot read token file {path}: {err.strerror}") from err


def load_incluster(root: str = SERVICE_ACCOUNT) -> ClusterConfig:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset) and no --kubeconfig given")
    if ":" in host:
        host = f"[{host}]"
    return ClusterConfig(server=f"https://{host}:{port}", ca_file=f"{root}/ca.crt", token_file=f"{root}/token")


def load_default(context: str | None = None, root: str = SERVICE_ACCOUNT) -> ClusterConfig:
    """No --kubeconfig and no $KUBECONFIG (the CLI reads that one): in a pod, the service account; elsewhere
    ``~/.kube/config``, as kubectl and controller-runtime do."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("KUBERNETES_SERVICE_PORT"):
        return load_incluster(root)
    home = os.path.expanduser("~/.kube/config")
    if os.path.isfile(home):
        return load_kubeconfig(home, context)
    raise ConfigError("no cluster to talk to: not running in a pod, no --kubeconfig or $KUBECONFIG, and no "
                      "~/.kube/config")


def load_client_cert_chain(context: ssl.SSLContext, config: ClusterConfig) -> None:
    """Load the client certificate into ``context``. ``ssl`` reads only files, so embedded key data is
    written to a private (0700) directory for the moment of loading and removed at once: no private
    key is left behind in /tmp."""
    if config.cert_data is None and config.key_data is None:
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
        return
    with tempfile.TemporaryDirectory(prefix="epctl-tls-") as private:
        cert_file, key_file = config.cert_file, config.key_file
        for data, name in ((config.cert_data, "client.crt"), (config.key_data, "client.key")):
            if data is None:
                continue
            path = os.path.join(private, name)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
            cert_file, key_file = (path, key_file) if name == "client.crt" else (cert_file, path)
        if cert_file is None:
            raise ConfigError("kubeconfig has a client key but no client certificate")
        context.load_cert_chain(cert_file, key_file)


def api_proxy(server: str, *, keep_credentials: bool = False) -> str | None:
    """The proxy that requests to ``server`` go through (HTTPS_PROXY/HTTP_PROXY, unless NO_PROXY
    covers the host: what kubectl honours), without its credentials unless ``keep_credentials``.

    Decided once per client: aiohttp's ``trust_env`` would re-read the environment and ~/.netrc in a
    thread for every request, a fifth of the controller's CPU while it writes."""
    parts = urllib.parse.urlsplit(server)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    if keep_credentials:
        return proxy
    proxy_parts = urllib.parse.urlsplit(proxy)
    return proxy_parts._replace(netloc=proxy_parts.netloc.rpartition("@")[2]).geturl()


def refuse_cleartext_credentials(config: ClusterConfig) -> None:
    """Credentials never travel over plain http (kubectl would send them; we refuse). A plain-http
    server without credentials (``kubectl proxy``) is fine."""
    if not config.server.startswith("http://"):
        return
    if config.token or config.token_file or config.token_provider or config.cert_file or config.cert_data:
        raise ConfigError(f"the API server {config.server} is plain http and the kubeconfig has credentials; "
                          "epctl does not send a token or client key in clear: use an https server")


def _named(items: list[Any], name: str | None, kind: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return item.get(kind) or {}
    raise ConfigError(f"kubeconfig has no {kind} named {name!r}")


def load_kubeconfig(path: str, context: str | None = None) -> ClusterConfig:
    """Read a kubeconfig; raises :class:`ConfigError`, or returns a config that needs the fallback.
    A ``$KUBECONFIG``-style list (``a:b``) uses its first existing file (kubectl merges them; the first
    file's current-context wins there too)."""
    if os.pathsep in path and not os.path.exists(path):
        found = [p for p in path.split(os.pathsep) if p and os.path.isfile(p)]
        if not found:
            raise ConfigError(f"none of the kubeconfig files {path!r} exists")
        path = found[0]
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except OSError as err:
        raise ConfigError(f"cannot read kubeconfig {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"kubeconfig {path} is not valid YAML: {err}") from err
    base = os.path.dirname(os.path.abspath(path))

    def local(file: str | None) -> str | None:
        return file if not file or os.path.isabs(file) else os.path.join(base, file)

    ctx = _named(doc.get("contexts", []), context or doc.get("current-context"), "context")
    cluster = _named(doc.get("clusters", []), ctx.get("cluster"), "cluster")
    user = _named(doc.get("users", []), ctx.get("user"), "user") if ctx.get("user") else {}
    if not cluster.get("server"):
        raise ConfigError(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server")
    config = ClusterConfig(
        server=cluster["server"].rstrip("/"),
        ca_file=local(cluster.get("certificate-authority")),
        ca_data=base64.b64decode(cluster["certificate-authority-data"]).decode()
        if cluster.get("certificate-authority-data") else None,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name"),
        token=user.get("token"), token_file=local(user.get("tokenFile")),
        cert_file=local(user.get("client-certificate")), key_file=local(user.get("client-key")))
    if user.get("client-certificate-data"):
        config.cert_data = base64.b64decode(user["client-certificate-data"])
    if user.get("client-key-data"):
        config.key_data = base64.b64decode(user["client-key-data"])
    if user.get("exec") or user.get("auth-provider"):
        config.token_provider = _plugin_tokens(path, context)
    return config


def _plugin_tokens(path: str, context: str | None) -> Callable[[], Awaitable[str | None]]:
    """Credentials from an exec or auth-provider plugin, through kubernetes_asyncio (imported lazily)."""
    state: dict[str, Any] = {}

    async def provider() -> str | None:
        if "configuration" not in state:
            from kubernetes_asyncio import client as k8s_client
            from kubernetes_asyncio import config as k8s_config

            configuration = k8s_client.Configuration()
            await k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
            state["configuration"] = configuration
        value = await state["configuration"].get_api_key_with_prefix("BearerToken")
        return str(value) if value else None

    return provider
