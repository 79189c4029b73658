"""Database probe credentials, read from a Secret through the API when a probe session opens.

A GET per session (not a watch): sessions are kept for hours, so the reads are rare, and the RBAC
is one verb (``get``) in the namespaces the overlay grants (manifests/overlays/database-secrets).
A changed Secret is used at the next reconnect. Nothing read here is logged; errors name the
Secret, never a value.
"""

from __future__ import annotations

import base64
import binascii

from epctl.kube.client import SECRETS, ApiError, KubeClient
from epctl.probe.credentials import Credentials, CredentialsError, CredentialSource, credentials_from_secret


def secret_credentials(client: KubeClient) -> CredentialSource:
    async def read(namespace: str, name: str) -> Credentials:
        try:
            secret = await client.request("GET", SECRETS.path(namespace, name))
        except ApiError as err:
            if err.code == 404:
                raise CredentialsError(f"Secret {name} not found") from None
            if err.code == 403:
                raise CredentialsError(f"Secret {name} is not readable by epctl (RBAC: see the "
                                       "database-secrets overlay)") from None
            raise CredentialsError(f"Secret {name}: API error {err.code}") from None
        try:
            data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        except (binascii.Error, TypeError, ValueError):
            raise CredentialsError(f"Secret {name}: data is not base64") from None
        data.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
        return credentials_from_secret(data)
    return read
