"""OpenStack credentials from a Secret's data or the environment. Pure: no I/O, tested directly.

Two shapes, as the issue and the OpenStack tooling define them:
- ``clouds.yaml`` (a key holding the file) plus ``cloud`` (the entry's name; optional when the
  file has exactly one cloud) — the entry is handed to openstacksdk's config loader unchanged;
- ``OS_*`` keys as an openrc file sets them (``OS_AUTH_URL``, ``OS_USERNAME``/``OS_USER_ID``,
  ``OS_PASSWORD``, ``OS_PROJECT_NAME``/``OS_PROJECT_ID`` (``OS_PROJECT`` and ``OS_TENANT_NAME`` as
  aliases), domains, ``OS_REGION_NAME``, ``OS_INTERFACE``, or ``OS_APPLICATION_CREDENTIAL_ID``/
  ``_NAME`` + ``_SECRET``).

``OS_CACERT`` holds the PEM of the CA that signs the cloud's endpoints (private clouds), or a path
to such a file (as in an openrc); the system trust store is used otherwise. Verification is never
switched off.

A user or project given by name needs a domain; when none is given the ``default`` domain id is
used, like the seed (which hard-coded it) and every devstack/openrc default — but an explicit
``OS_USER_DOMAIN_NAME`` etc. always wins. Nothing reads the controller's own environment or files:
a Secret fully describes its cloud.

Errors name the missing or bad *key*, never a value. :attr:`Credentials.secrets` lists the values
that must never be shown, for :func:`redact`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

SECRET_AUTH_KEYS = ("password", "application_credential_secret", "token", "secret")


class CredentialsError(ValueError):
    """The credentials are unusable; the message names keys, never values."""


@dataclass(frozen=True)
class Credentials:
    """Keyword arguments for ``OpenStackConfig.get_one`` plus what must stay secret."""

    config_json: str  # canonical JSON of the kwargs (hashable, comparable)
    secrets: tuple[str, ...]

    @property
    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.config_json)
        return result

    @property
    def fingerprint(self) -> str:
        """Identifies equal credentials (shared pollers); a hash, safe to show."""
        return hashlib.sha256(self.config_json.encode()).hexdigest()[:12]

    @property
    def auth_url(self) -> str:
        return str(self.config.get("auth", {}).get("auth_url", ""))

    def __repr__(self) -> str:  # never let a stray log line print the password
        return f"Credentials(auth_url={self.auth_url!r}, fingerprint={self.fingerprint})"


def _make(config: dict[str, Any]) -> Credentials:
    auth = config.get("auth") or {}
    secrets = tuple(sorted({str(auth[k]) for k in SECRET_AUTH_KEYS if auth.get(k)}))
    return Credentials(json.dumps(config, sort_keys=True, separators=(",", ":")), secrets)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for value in secrets:
        if value:
            text = text.replace(value, "***")
    return text


def _from_os_vars(values: Mapping[str, str], where: str) -> Credentials:
    def get(*names: str) -> str | None:
        for name in names:
            value = values.get(name)
            if value not in (None, ""):
                return str(value).strip()
        return None

    auth_url = get("OS_AUTH_URL")
    if not auth_url:
        raise CredentialsError(f"{where}: OS_AUTH_URL is missing")
    auth: dict[str, Any] = {"auth_url": auth_url}
    config: dict[str, Any] = {}
    app_id, app_name = get("OS_APPLICATION_CREDENTIAL_ID"), get("OS_APPLICATION_CREDENTIAL_NAME")
    if app_id or app_name:
        app_secret = get("OS_APPLICATION_CREDENTIAL_SECRET")
        if not app_secret:
            raise CredentialsError(f"{where}: OS_APPLICATION_CREDENTIAL_SECRET is missing")
        config["auth_type"] = "v3applicationcredential"
        auth["application_credential_secret"] = app_secret
        if app_id:
            auth["application_credential_id"] = app_id
        else:
            auth["application_credential_name"] = app_name
            user = get("OS_USERNAME")
            user_id = get("OS_USER_ID")
            if not (user or user_id):
                raise CredentialsError(f"{where}: OS_APPLICATION_CREDENTIAL_NAME needs OS_USERNAME or OS_USER_ID")
            auth.update({"username": user} if user else {"user_id": user_id})
            if user:
                _domain(auth, "user", get("OS_USER_DOMAIN_NAME"), get("OS_USER_DOMAIN_ID"))
    else:
        config["auth_type"] = "password"
        user, user_id, password = get("OS_USERNAME"), get("OS_USER_ID"), get("OS_PASSWORD")
        if not (user or user_id):
            raise CredentialsError(f"{where}: OS_USERNAME (or OS_USER_ID, or OS_APPLICATION_CREDENTIAL_ID) is missing")
        if not password:
            raise CredentialsError(f"{where}: OS_PASSWORD is missing")
        auth.update({"username": user} if user else {"user_id": user_id})
        auth["password"] = password
        if user:
            _domain(auth, "user", get("OS_USER_DOMAIN_NAME"), get("OS_USER_DOMAIN_ID"))
        project, project_id = get("OS_PROJECT_NAME", "OS_PROJECT", "OS_TENANT_NAME"), get("OS_PROJECT_ID",
                                                                                           "OS_TENANT_ID")
        if project_id:
            auth["project_id"] = project_id
        elif project:
            auth["project_name"] = project
            _domain(auth, "project", get("OS_PROJECT_DOMAIN_NAME"), get("OS_PROJECT_DOMAIN_ID"))
    for env, key in (("OS_REGION_NAME", "region_name"), ("OS_INTERFACE", "interface")):
        value = get(env)
        if value:
            config[key] = value
    _cacert(config, values.get("OS_CACERT"))
    config["auth"] = auth
    return _make(config)


CA_PEM_KEY = "cacert_pem"  # our key in the config: PEM content, written to a file before use


def _cacert(config: dict[str, Any], value: str | None) -> None:
    if not value or not value.strip():
        return
    if value.lstrip().startswith("-----BEGIN"):
        config[CA_PEM_KEY] = value.strip() + "\n"
    else:
        config["cacert"] = value.strip()


def _domain(auth: dict[str, Any], who: str, name: str | None, domain_id: str | None) -> None:
    if name:
        auth[f"{who}_domain_name"] = name
    else:
        auth[f"{who}_domain_id"] = domain_id or "default"


def _from_clouds_yaml(text: str, cloud: str | None, where: str) -> Credentials:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise CredentialsError(f"{where}: clouds.yaml is not valid YAML{line}") from None
    clouds = doc.get("clouds") if isinstance(doc, dict) else None
    if not isinstance(clouds, dict) or not clouds:
        raise CredentialsError(f"{where}: clouds.yaml has no 'clouds' mapping")
    if cloud is None:
        if len(clouds) != 1:
            raise CredentialsError(f"{where}: clouds.yaml lists {len(clouds)} clouds "
                                   f"({', '.join(sorted(map(str, clouds)))}); set the 'cloud' key to pick one")
        cloud = str(next(iter(clouds)))
    entry = clouds.get(cloud)
    if not isinstance(entry, dict):
        raise CredentialsError(f"{where}: clouds.yaml has no cloud named {cloud!r} "
                               f"(has: {', '.join(sorted(map(str, clouds)))})")
    auth = entry.get("auth")
    if not isinstance(auth, dict) or not auth.get("auth_url"):
        raise CredentialsError(f"{where}: clouds.yaml cloud {cloud!r} has no auth.auth_url")
    config = {k: v for k, v in entry.items() if k not in ("profile", "cert", "key")}
    auth = dict(auth)
    if "application_credential_id" not in auth and "application_credential_name" not in auth:
        if auth.get("username") and not (auth.get("user_domain_name") or auth.get("user_domain_id")
                                         or auth.get("domain_name") or auth.get("domain_id")):
            auth["user_domain_id"] = "default"
        if auth.get("project_name") and not (auth.get("project_domain_name") or auth.get("project_domain_id")
                                             or auth.get("domain_name") or auth.get("domain_id")):
            auth["project_domain_id"] = "default"
    config["auth"] = auth
    if "auth_type" not in config:
        config["auth_type"] = ("v3applicationcredential" if "application_credential_secret" in auth
                               else "password")
    return _make(config)


def credentials_from_secret(data: Mapping[str, str], where: str) -> Credentials:
    """Credentials from a Secret's decoded ``data``. ``where`` (e.g. ``Secret ns/name``) prefixes errors."""
    if "clouds.yaml" in data:
        credentials = _from_clouds_yaml(data["clouds.yaml"], (data.get("cloud") or "").strip() or None, where)
        if data.get("OS_CACERT"):  # the CA as a Secret key beats a cacert path inside clouds.yaml
            config = credentials.config
            config.pop("cacert", None)
            _cacert(config, data["OS_CACERT"])
            credentials = _make(config)
        return credentials
    if any(key.startswith("OS_") for key in data):
        return _from_os_vars(data, where)
    raise CredentialsError(f"{where}: holds neither a 'clouds.yaml' key nor OS_* keys "
                           f"(has: {', '.join(sorted(data)) or 'nothing'})")


def credentials_from_env(env: Mapping[str, str]) -> Credentials:
    """Credentials from OS_* environment variables (``epctl manager``)."""
    return _from_os_vars(env, "environment")
