"""Strict field checking for ClusterEndpoint documents. Pure: no I/O.

The API server rejects unknown fields (``kubectl apply`` uses strict field validation), but a
document read by ``epctl check`` or stored before the CRD schema was tightened never met it. A
misspelt probe key (``tcpsocket``, ``periodSecond``) must not silently turn health checking off,
so every field the schema does not know is an error naming its path, worded like kubectl's
``strict decoding error: unknown field "spec.ports[0].tcpSocket.foo"``.

``SPEC_FIELDS`` mirrors ``manifests/base/crd.yaml`` (a test compares them). ``None`` marks a
subtree whose keys are free (a map, or metadata/status, which are not ours to judge).
"""

from __future__ import annotations

import difflib
from typing import Any

Fields = dict[str, "Fields | None"]

_PROBE_TIMING: Fields = {k: None for k in (
    "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold", "initialDelaySeconds")}

PORT_FIELDS: Fields = {
    "name": None, "protocol": None, "port": None, "targetPort": None, "hosts": None,
    **_PROBE_TIMING,
    "tcpSocket": {"enable": None, "port": None},
    "httpGet": {"enable": None, "path": None, "scheme": None, "port": None, "insecureSkipVerify": None,
                "httpHeaders": {"name": None, "value": None}},
    "udpSocket": {"enable": None, "data": None, "port": None},
    "grpc": {"enable": None, "service": None, "port": None, "tls": {"enable": None, "insecureSkipVerify": None}},
    **{kind: {"enable": None, "expect": None, "maxLagSeconds": None, "secretRef": {"name": None}, "port": None,
              "tls": {"enable": None, "serverName": None, "insecureSkipVerify": None},
              **({"database": None} if kind != "redis" else {})}
       for kind in ("postgres", "mysql", "redis")},
}

OPENSTACK_FIELDS: Fields = {
    "secretRef": {"name": None}, "nameRegex": None, "metadata": None, "tags": None, "status": None,
    "network": None, "addressKind": None, "ipVersion": None, "pollSeconds": None, "keepLastOnEmpty": None,
}

SPEC_FIELDS: Fields = {
    "periodSeconds": None, "clusterIP": None, "discovery": {"openstack": OPENSTACK_FIELDS}, "ports": PORT_FIELDS,
    "zones": None,
}

DOCUMENT_FIELDS: Fields = {"apiVersion": None, "kind": None, "metadata": None, "spec": SPEC_FIELDS, "status": None}

# Fields a user may bring from a Pod's probe, with why they do not apply here.
_HINTS = {
    "exec": "exec probes are not supported: epctl probes from the controller over the network "
            "(tcpSocket, httpGet, udpSocket, grpc, postgres, mysql, redis)",
    "host": "the probe goes to each listed host; list hosts under spec.ports[].hosts",
    "terminationGracePeriodSeconds": "not used: epctl does not terminate anything",
}


def unknown_fields(doc: Any, known: Fields = DOCUMENT_FIELDS, path: str = "") -> list[tuple[str, str]]:
    """(field path, message) for every key of ``doc`` not in ``known``, depth first, in document order."""
    found: list[tuple[str, str]] = []
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            found += unknown_fields(item, known, f"{path}[{i}]")
        return found
    if not isinstance(doc, dict):
        return found  # a wrong type is the parser's error, with a better message
    for key, value in doc.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            found.append((where, _message(where, str(key), known)))
        elif (subtree := known[key]) is not None:
            found += unknown_fields(value, subtree, where)
    return found


def _message(where: str, key: str, known: Fields) -> str:
    message = f'unknown field "{where}"'
    folded = {k.lower(): k for k in known}
    if key in _HINTS:
        return f"{message}: {_HINTS[key]}"
    if key.lower() in folded:
        return f'{message} (did you mean "{folded[key.lower()]}"? field names are case-sensitive)'
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    if close:
        return f'{message} (did you mean "{close[0]}"?)'
    return message
