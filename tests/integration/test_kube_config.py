"""How epctl finds and authenticates to the API server: kubeconfig variants and in-cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from epctl.kube.client import NAMESPACES, ApiError, KubeClient
from epctl.kube.config import ConfigError, load_incluster, load_kubeconfig
from epctl.testing.kubeapi import KubeAPIServer


def write(path: Path, doc: Any) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


async def test_exec_credential_plugin_goes_through_the_fallback(api: KubeAPIServer, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": api.token}}
    plugin.write_text(f"import json\nprint(json.dumps({credential!r}))\n")
    config = api.kubeconfig()
    config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                           "command": sys.executable, "args": [str(plugin)],
                                           "interactiveMode": "Never"}}
    async with await KubeClient.connect(write(tmp_path / "kc", config)) as client:
        namespaces = await client.request("GET", NAMESPACES.path())
        assert "default" in {n["metadata"]["name"] for n in namespaces["items"]}


async def test_token_file_is_reread_so_rotation_works(api: KubeAPIServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("stale-token")
    config = api.kubeconfig()
    config["users"][0]["user"] = {"tokenFile": "token"}  # relative to the kubeconfig's directory
    async with await KubeClient.connect(write(tmp_path / "kc", config)) as client:
        with pytest.raises(ApiError) as err:
            await client.request("GET", NAMESPACES.path())
        assert err.value.code == 401
        token.write_text(api.token)
        client.config.token_reread_seconds = 0.0
        assert (await client.request("GET", NAMESPACES.path()))["kind"] == "NamespaceList"


def test_in_cluster_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("abc")
    (tmp_path / "ca.crt").write_text("x")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="not running in a cluster"):
        load_incluster(str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    config = load_incluster(str(tmp_path))
    assert config.server == "https://[fd00::1]:443" and config.token_file == f"{tmp_path}/token"


def test_kubeconfig_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read kubeconfig"):
        load_kubeconfig(str(tmp_path / "missing"))
    path = write(tmp_path / "kc", {"current-context": "nope", "contexts": []})
    with pytest.raises(ConfigError, match="no context named 'nope'"):
        load_kubeconfig(path)


async def test_embedded_client_key_is_not_left_on_disk(api: KubeAPIServer, tmp_path: Path) -> None:
    import base64
    import glob
    import tempfile

    from epctl.testing.tls import serving_certs
    pair = serving_certs()  # any certificate and its key will do: the test server does not ask for one
    config = api.kubeconfig()
    config["users"][0]["user"]["client-certificate-data"] = base64.b64encode(pair.cert_pem).decode()
    config["users"][0]["user"]["client-key-data"] = base64.b64encode(pair.key_pem).decode()
    pattern = f"{tempfile.gettempdir()}/epctl-*"
    before = set(glob.glob(pattern))
    async with await KubeClient.connect(write(tmp_path / "kc", config)) as client:
        await client.request("GET", NAMESPACES.path())
        assert set(glob.glob(pattern)) == before, "no key material written to the temp directory stays there"


def test_credentials_are_never_sent_over_plain_http(api: KubeAPIServer, tmp_path: Path) -> None:
    import asyncio
    config = api.kubeconfig()
    config["clusters"][0]["cluster"]["server"] = api.url.replace("https://", "http://")
    with pytest.raises(ConfigError, match="plain http"):
        asyncio.run(KubeClient.connect(write(tmp_path / "kc", config)))


def test_the_proxy_in_effect_is_named_without_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from epctl.kube.config import api_proxy
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "10.96.0.1")
    assert api_proxy("https://api.example:6443") == "http://proxy.example:3128"
    assert api_proxy("https://10.96.0.1:443") is None


async def test_requests_go_through_the_environment_proxy_with_its_credentials(
        api: KubeAPIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY is honoured (as kubectl does), decided once per client, credentials included."""
    import asyncio
    import base64

    tunnels: list[tuple[str, str]] = []  # (CONNECT target, Proxy-Authorization)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = head.split()[1]
        auth = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                     if line.lower().startswith("proxy-authorization:")), "")
        tunnels.append((target, auth))
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:s3cret@127.0.0.1:{port}")
    try:
        async with await KubeClient.connect(api.kubeconfig_path) as client:
            await client.request("GET", NAMESPACES.path())
            await client.request("GET", NAMESPACES.path())
    finally:
        proxy.close()
    expected = "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert tunnels and all(t == (api.url.removeprefix("https://"), expected) for t in tunnels)
