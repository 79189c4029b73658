"""Pure OpenStack pieces: server selection, Nova filters, credentials, error classification."""

from __future__ import annotations

from typing import Any

import pytest
from keystoneauth1 import exceptions as ks

from epctl.api.spec import ServerQuery
from epctl.sources.openstack import classify
from epctl.sources.openstack_auth import CredentialsError, credentials_from_env, credentials_from_secret, redact
from epctl.sources.openstack_select import nova_filters, select_servers, server_addresses, server_matches


def server(name: str = "db-1", status: str = "ACTIVE", **fields: Any) -> dict[str, Any]:
    return {"id": f"id-{name}", "name": name, "status": status, "metadata": {}, "tags": [],
            "addresses": {"private": [{"addr": "10.0.0.1", "version": 4, "OS-EXT-IPS:type": "fixed"}]}, **fields}


def test_name_is_a_search_and_status_defaults_to_active() -> None:
    query = ServerQuery(name_regex="^db-")
    assert server_matches(server("db-1"), query)
    assert not server_matches(server("mydb-1"), query)
    assert not server_matches(server("db-2", "SHUTOFF"), query)
    assert server_matches(server("x-db-1"), ServerQuery(name_regex="db"))


def test_metadata_needs_full_matches_of_key_and_value_for_every_pair() -> None:
    query = ServerQuery(metadata=(("role", "primary"), ("e.v", "prod|staging")))
    assert server_matches(server(metadata={"role": "primary", "env": "prod"}), query)
    assert not server_matches(server(metadata={"role": "primary-old", "env": "prod"}), query)
    assert not server_matches(server(metadata={"role": "primary"}), query)
    assert not server_matches(server(metadata={"myrole": "primary", "env": "prod"}), query)


def test_tags_all_required() -> None:
    query = ServerQuery(tags=("a", "b"))
    assert server_matches(server(tags=["a", "b", "c"]), query)
    assert not server_matches(server(tags=["a"]), query)


def test_addresses_by_network_kind_and_version_sorted_and_normalised() -> None:
    addresses = {"private": [{"addr": "10.0.0.10", "version": 4, "OS-EXT-IPS:type": "fixed"},
                             {"addr": "10.0.0.9", "version": 4, "OS-EXT-IPS:type": "fixed"},
                             {"addr": "192.0.2.1", "version": 4, "OS-EXT-IPS:type": "floating"},
                             {"addr": "FD00:0::1", "version": 6, "OS-EXT-IPS:type": "fixed"},
                             {"addr": "not-an-ip", "version": 4}],
                 "public": [{"addr": "198.51.100.1", "version": 4}]}
    s = server(addresses=addresses)
    assert server_addresses(s, ServerQuery()) == ["10.0.0.9", "10.0.0.10", "198.51.100.1"]
    assert server_addresses(s, ServerQuery(network="private")) == ["10.0.0.9", "10.0.0.10"]
    assert server_addresses(s, ServerQuery(address_kind="floating")) == ["192.0.2.1"]
    assert server_addresses(s, ServerQuery(network="private", address_kind="any")) == [
        "10.0.0.9", "10.0.0.10", "192.0.2.1"]
    assert server_addresses(s, ServerQuery(ip_version=6)) == ["fd00::1"]


def test_seed_network_metadata_only_when_asked() -> None:
    s = server(metadata={"x.endpoint.network.name": "public"},
               addresses={"private": [{"addr": "10.0.0.1", "version": 4}],
                          "public": [{"addr": "198.51.100.1", "version": 4}]})
    assert server_addresses(s, ServerQuery(), seed_network_metadata=True) == ["198.51.100.1"]
    assert server_addresses(s, ServerQuery()) == ["10.0.0.1", "198.51.100.1"]


def test_selection_is_order_insensitive() -> None:
    a, b = server("a", addresses={"n": [{"addr": "10.0.0.2"}, {"addr": "10.0.0.1"}]}), server("b")
    first = select_servers([a, b], ServerQuery())
    b_reordered = dict(b, addresses={"private": list(reversed(b["addresses"]["private"]))})
    assert first == select_servers([b_reordered, dict(a, addresses={"n": [{"addr": "10.0.0.1"},
                                                                             {"addr": "10.0.0.2"}]})],
                                   ServerQuery())
    assert [s.addresses for s in first] == [("10.0.0.1", "10.0.0.2"), ("10.0.0.1",)]


def test_nova_filters_send_only_what_nova_reads_the_same_way() -> None:
    assert nova_filters(ServerQuery(name_regex="^db-[0-9]+$", tags=("a", "b"), statuses=("ACTIVE", "SHUTOFF"))) == {
        "name": "^db-[0-9]+$", "tags": "a,b", "status": ["ACTIVE", "SHUTOFF"]}
    assert "name" not in nova_filters(ServerQuery(name_regex=r"^db-\d+$"))  # \d: filtered here only
    assert "name" not in nova_filters(ServerQuery(name_regex="(?i)^db"))


def test_os_vars_password_with_default_domains_and_aliases() -> None:
    creds = credentials_from_env({"OS_AUTH_URL": "https://keystone:5000/v3", "OS_USERNAME": "u",
                                  "OS_PASSWORD": "p4ss", "OS_PROJECT": "proj", "OS_REGION_NAME": "R1"})
    assert creds.config == {"auth_type": "password", "region_name": "R1", "auth": {
        "auth_url": "https://keystone:5000/v3", "username": "u", "password": "p4ss", "user_domain_id": "default",
        "project_name": "proj", "project_domain_id": "default"}}
    assert "p4ss" not in repr(creds) and creds.secrets == ("p4ss",)
    named = credentials_from_env({"OS_AUTH_URL": "x", "OS_USERNAME": "u", "OS_PASSWORD": "p",
                                  "OS_PROJECT_ID": "pid", "OS_USER_DOMAIN_NAME": "Corp"})
    assert named.config["auth"]["user_domain_name"] == "Corp" and named.config["auth"]["project_id"] == "pid"


def test_application_credentials() -> None:
    creds = credentials_from_secret({"OS_AUTH_URL": "x", "OS_APPLICATION_CREDENTIAL_ID": "id",
                                     "OS_APPLICATION_CREDENTIAL_SECRET": "s3cr3t"}, "Secret ns/n")
    assert creds.config == {"auth_type": "v3applicationcredential", "auth": {
        "auth_url": "x", "application_credential_id": "id", "application_credential_secret": "s3cr3t"}}
    assert creds.secrets == ("s3cr3t",)


@pytest.mark.parametrize(("data", "message"), [
    ({}, "neither a 'clouds.yaml' key nor OS_* keys"),
    ({"OS_USERNAME": "u"}, "OS_AUTH_URL is missing"),
    ({"OS_AUTH_URL": "x", "OS_PASSWORD": "hunter2"}, "OS_USERNAME"),
    ({"OS_AUTH_URL": "x", "OS_USERNAME": "u"}, "OS_PASSWORD is missing"),
    ({"OS_AUTH_URL": "x", "OS_APPLICATION_CREDENTIAL_ID": "i"}, "OS_APPLICATION_CREDENTIAL_SECRET is missing"),
    ({"clouds.yaml": "clouds: [", "cloud": "a"}, "not valid YAML"),
    ({"clouds.yaml": "clouds: {a: {auth: {auth_url: x}}, b: {auth: {auth_url: y}}}"}, "set the 'cloud' key"),
    ({"clouds.yaml": "clouds: {a: {auth: {auth_url: x}}}", "cloud": "z"}, "no cloud named 'z'"),
])
def test_unusable_credentials_name_keys_never_values(data: dict[str, str], message: str) -> None:
    with pytest.raises(CredentialsError) as err:
        credentials_from_secret(data, "Secret ns/n")
    assert message in str(err.value) and str(err.value).startswith("Secret ns/n")
    assert "hunter2" not in str(err.value)


def test_clouds_yaml_entry_is_used_as_is_with_default_domains() -> None:
    text = ("clouds:\n  a:\n    region_name: R\n"
            "    auth: {auth_url: 'https://k/v3', username: u, password: pw, project_name: p}\n")
    creds = credentials_from_secret({"clouds.yaml": text}, "Secret ns/n")
    assert creds.config["auth"]["user_domain_id"] == "default" and creds.config["region_name"] == "R"
    assert creds.fingerprint == credentials_from_secret({"clouds.yaml": text, "cloud": "a"}, "x").fingerprint


def test_classify_and_redact() -> None:
    assert classify(ks.http.Unauthorized())[0] == "AuthenticationFailed"
    assert classify(ks.ConnectTimeout("slow"))[0] == "Timeout"
    assert classify(ks.ConnectFailure("refused"))[0] == "Unreachable"
    assert classify(ks.http.ServiceUnavailable())[0] == "ServerError"
    reason, message = classify(RuntimeError("boom pw=hunter2"), ("hunter2",))
    assert reason == "Error" and "hunter2" not in message and "***" in message
    assert redact("a hunter2 b", ("hunter2", "")) == "a *** b"


def test_discovery_spec_parses_with_defaults_and_reports_every_error() -> None:
    from epctl.api import parse_cluster_endpoint

    def doc(openstack: Any) -> dict[str, Any]:
        return {"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": "db"},
                "spec": {"ports": [{"port": 5432}], "discovery": {"openstack": openstack}}}

    spec, errors = parse_cluster_endpoint(doc({"secretRef": {"name": "os"}, "status": ["active", "SHUTOFF"]}))
    assert errors == [] and spec is not None and spec.openstack is not None
    assert spec.openstack.query == ServerQuery(statuses=("ACTIVE", "SHUTOFF"))
    assert (spec.openstack.poll_seconds, spec.openstack.keep_last_on_empty) == (30, False)
    _, errors = parse_cluster_endpoint(doc({"nameRegex": "(", "metadata": {"[": "x"}, "status": ["ACTVE"],
                                            "addressKind": "x", "ipVersion": 5, "pollSeconds": 0, "tags": ["a,b"]}))
    assert sorted(e.path for e in errors) == sorted([
        "spec.discovery.openstack.secretRef.name", "spec.discovery.openstack.nameRegex",
        "spec.discovery.openstack.metadata[[]", "spec.discovery.openstack.status[0]",
        "spec.discovery.openstack.addressKind", "spec.discovery.openstack.ipVersion",
        "spec.discovery.openstack.pollSeconds", "spec.discovery.openstack.tags[0]"])


def test_ca_bundle_as_pem_or_path() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    base = {"OS_AUTH_URL": "https://k/v3", "OS_APPLICATION_CREDENTIAL_ID": "i",
            "OS_APPLICATION_CREDENTIAL_SECRET": "s"}
    assert credentials_from_secret({**base, "OS_CACERT": pem}, "x").config["cacert_pem"] == pem + "\n"
    assert credentials_from_env({**base, "OS_CACERT": "/etc/ssl/cloud.pem"}).config["cacert"] == "/etc/ssl/cloud.pem"
    text = "clouds: {a: {cacert: /nowhere.pem, auth: {auth_url: x, application_credential_id: i, " \
           "application_credential_secret: s}}}"
    config = credentials_from_secret({"clouds.yaml": text, "OS_CACERT": pem}, "x").config
    assert "cacert" not in config and config["cacert_pem"] == pem + "\n"
