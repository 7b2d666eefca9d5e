"""``render_server_config``'s TLS and cluster options: what they render, and what they refuse.

(That nats-server accepts the result is checked by ``nats-server -t`` in tests/sdk/test_tls.py,
and by starting a secured cluster from it in tests/compiled/test_secured_cluster.py.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from eventwire_security import ServerConfigError, render_server_config

ACCOUNTS: dict[str, Any] = {"acme": [("acme-admin", "pw", {"publish": {"allow": [">"]}})]}
TLS = {"tls_cert": "/certs/server.pem", "tls_key": "/certs/server-key.pem"}
CLUSTER = {"server_name": "n1", "cluster_name": "ew", "cluster_port": 6222}


def _render(**options: Any) -> str:
    return render_server_config(ACCOUNTS, store_dir="/data", port=4222, **options)


def test_without_options_the_config_is_a_single_plaintext_server() -> None:
    text = _render()
    assert "tls" not in text
    assert "cluster" not in text
    assert "server_name" not in text


def test_tls_on_the_client_port_with_verified_clients() -> None:
    text = _render(**TLS, tls_ca="/certs/ca.pem", tls_verify=True, host="0.0.0.0")
    assert 'host: "0.0.0.0"' in text
    assert (
        'tls: {cert_file: "/certs/server.pem", key_file: "/certs/server-key.pem", '
        'ca_file: "/certs/ca.pem", verify: true, timeout: 2}'
    ) in text
    assert json.loads(text.split("accounts: ", 1)[1])["acme"]["users"][0]["user"] == "acme-admin"


def test_a_tls_cluster_node_verifies_its_peers_on_the_routes() -> None:
    routes = ["nats-route://n2:6222", "nats-route://n3:6222"]
    text = _render(**TLS, tls_ca="/certs/ca.pem", **CLUSTER, routes=routes, monitor_port=8222)
    head, cluster = text.split("cluster: {\n", 1)
    assert 'server_name: "n1"' in head
    assert 'http: "127.0.0.1:8222"' in head
    assert "verify: false" in head  # clients: TLS, no client certificate asked for
    block = cluster.split("\n}\n", 1)[0]
    assert 'name: "ew"' in block
    assert 'listen: "127.0.0.1:6222"' in block
    assert 'routes: ["nats-route://n2:6222", "nats-route://n3:6222"]' in block
    assert 'ca_file: "/certs/ca.pem", verify: true' in block  # routes: mutual TLS


def test_a_cluster_without_tls_and_a_seed_node_without_routes() -> None:
    block = _render(**CLUSTER).split("cluster: {\n", 1)[1]
    assert "routes: []" in block
    assert "tls" not in block


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"tls_cert": "/c.pem"}, "tls_cert"),
        ({"tls_key": "/k.pem"}, "tls_cert"),
        ({"tls_ca": "/ca.pem"}, "tls_ca"),
        ({"tls_verify": True}, "tls_ca"),
        ({**TLS, "tls_verify": True}, "tls_verify"),
        ({**TLS, "tls_verify": "yes"}, "tls_verify"),
        ({"tls_cert": '/c".pem', "tls_key": "/k.pem"}, "tls_cert"),
        ({"tls_cert": "/c.pem", "tls_key": ""}, "tls_key"),
        ({"server_name": "n 1"}, "server_name"),
        ({"cluster_port": 6222}, "cluster_name"),
        ({"routes": ["nats-route://n2:6222"]}, "cluster_name"),
        ({"cluster_name": "ew", "cluster_port": 6222}, "server_name"),
        ({"cluster_name": "ew", "server_name": "n1"}, "cluster_port"),
        ({**CLUSTER, "cluster_name": "e w"}, "cluster_name"),
        ({**CLUSTER, "cluster_port": 0}, "cluster_port"),
        ({**CLUSTER, "routes": "nats-route://n2:6222"}, "routes"),
        ({**CLUSTER, "routes": ["nats://n2:6222"]}, "routes"),
        ({**CLUSTER, "routes": ["nats-route://user:pw@n2:6222"]}, "routes"),
        ({**CLUSTER, "routes": ['nats-route://n2:6222"']}, "routes"),
        ({**CLUSTER, **TLS}, "tls_ca"),  # TLS routes cannot check their peers without a CA
        ({"monitor_port": -1}, "monitor_port"),
        ({"monitor_port": True}, "monitor_port"),
    ],
)
def test_bad_options_are_refused_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ServerConfigError) as refused:
        _render(**options)
    assert refused.value.field == field
