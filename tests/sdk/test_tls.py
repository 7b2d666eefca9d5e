"""TLS: certificates from ``eventwire tls init``, a real nats-server started from the config
``Deployment`` renders with them, and clients that trust its CA, or do not.

"At once" is shown without a clock, as in test_error_boundary: the connect timeout is a
minute, and the error is the TLS failure itself, not the timeout's.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

import eventwire
from eventwire import (
    TLS,
    CertificateError,
    CertificateFiles,
    ConnectionFailed,
    Credentials,
    Deployment,
    EmbeddedServer,
    Event,
    InvalidArgument,
    Keyring,
    KnowledgeShared,
    TLSFailed,
    find_nats_server,
    init_certificates,
)
from tests._processes import cli, free_ports, start, stop
from tests.conftest import make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

PATIENT = 60.0  # a connect timeout no test waits for: the TLS errors come first
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Served:
    url: str
    admin: Credentials
    deployment: Deployment

    @property
    def login(self) -> str:
        return self.admin.url(self.url)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return init_certificates(tmp_path_factory.mktemp("tls") / "certs", clients=["writer"])


@pytest.fixture(scope="module")
async def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certs: CertificateFiles
) -> AsyncIterator[Served]:
    """One server for the module, from the deployment's rendered config: TLS required."""
    base = tmp_path_factory.mktemp("tls-server")
    deployment, port = Deployment(base / "deployment"), free_ports(1)[0]
    deployment.configure(port=port, store_dir=str(base / "jetstream"))
    admin = deployment.create_tenant("acme")
    config = deployment.write_config(
        tls_cert=str(certs.server_cert), tls_key=str(certs.server_key), tls_ca=str(certs.ca)
    )
    proc = await start(config, base / "nats-server.log", port)
    try:
        yield Served(f"nats://127.0.0.1:{port}", admin, deployment)
    finally:
        await stop(proc)


def assert_no_secret(error: BaseException, password: str) -> None:
    for text in (str(error), repr(error), str(getattr(error, "url", ""))):
        assert password not in text


async def _refused(url: str, tls: TLS | ssl.SSLContext | None) -> TLSFailed:
    with pytest.raises(TLSFailed) as refused:
        async with eventwire.connect(url, tenant="acme", tls=tls, connect_timeout=PATIENT):
            pass  # pragma: no cover - never connected
    return refused.value


# -- a TLS server ----------------------------------------------------------------------------


async def test_a_client_trusting_the_ca_publishes_and_receives_a_signed_event(
    tls_server: Served, certs: CertificateFiles, root: str
) -> None:
    keyring, seen = Keyring(), list[Event]()
    writer = make_identity("writer", keyring)

    async def handler(event: Event) -> None:
        seen.append(event)

    tls = TLS(ca=certs.ca)
    async with eventwire.connect(
        tls_server.login, tenant="acme", keyring=keyring, root=root, tls=tls
    ) as bus:
        async with bus.subscribe("knowledge.*", handler, durable="reader"):
            ack = await bus.publish(KnowledgeShared(topic="tls", content="x"), identity=writer)
            await wait_until(lambda: len(seen) == 1)
        assert bus.security.rejected == {}
    event = seen[0]
    assert (event.id, event.source, event.data["content"]) == (ack.event_id, "acme/writer", "x")


async def test_an_ssl_context_is_taken_as_is(tls_server: Served, certs: CertificateFiles) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    async with eventwire.connect(tls_server.login, tenant="acme", tls=context) as bus:
        assert await bus.agents() == []


async def test_a_client_without_the_ca_is_refused_at_once(tls_server: Served) -> None:
    for tls in (None, TLS()):  # nats-py's default context, and the system's CAs
        error = await _refused(tls_server.login, tls)
        assert isinstance(error, ConnectionFailed)
        assert error.url == tls_server.url.replace("://", "://***@")
        assert error.reason == (
            "the server's certificate is not accepted: unable to get local issuer certificate"
        )
        assert "pass the CA that signed the server's certificate: tls=eventwire.TLS(ca=...)" in (
            str(error)
        )
        assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
        assert_no_secret(error, tls_server.admin.password)


async def test_a_certificate_for_another_host_is_refused(
    tls_server: Served, certs: CertificateFiles
) -> None:
    error = await _refused(tls_server.login, TLS(ca=certs.ca, hostname="nats.example.com"))
    assert "not valid for 'nats.example.com'" in error.reason
    assert "TLS(hostname=...)" in str(error)
    async with eventwire.connect(  # localhost is in the certificate
        tls_server.login.replace("127.0.0.1", "localhost"), tenant="acme", tls=TLS(ca=certs.ca)
    ):
        pass


async def test_a_tls_client_never_talks_plaintext(
    nats_server: EmbeddedServer, certs: CertificateFiles
) -> None:
    error = await _refused(nats_server.url, TLS(ca=certs.ca))
    assert error.reason == "the server does not offer TLS"
    assert "use its TLS port, or connect without tls=" in str(error)


async def test_a_bus_rides_out_a_server_with_a_bad_certificate(
    certs: CertificateFiles, tmp_path: Path, root: str, caplog: pytest.LogCaptureFixture
) -> None:
    # It reconnects once the server is mended, and it closes while the server is not:
    # nats-py's close waited forever for a stream whose TLS handshake had failed.
    foreign = init_certificates(tmp_path / "foreign")
    deployment, port = Deployment(tmp_path / "deployment"), free_ports(1)[0]
    deployment.configure(port=port, store_dir=str(tmp_path / "jetstream"))
    admin = deployment.create_tenant("acme")
    for name, made in (("good", certs), ("bad", foreign)):
        deployment.write_config(
            tmp_path / f"{name}.conf", tls_cert=str(made.server_cert), tls_key=str(made.server_key)
        )
    log, keyring = tmp_path / "nats-server.log", Keyring()
    writer = make_identity("writer", keyring)
    proc = await start(tmp_path / "good.conf", log, port)

    async def restart(name: str) -> None:
        nonlocal proc
        await stop(proc)
        caplog.clear()
        proc = await start(tmp_path / f"{name}.conf", log, port)

    try:
        bus = eventwire.connect(
            admin.url(f"nats://127.0.0.1:{port}"), tenant="acme", keyring=keyring, root=root,
            tls=TLS(ca=certs.ca),
        )  # fmt: skip
        async with asyncio.timeout(30), bus:  # the timeout: a close that hangs fails the test
            await restart("bad")
            await wait_until(lambda: "certificate verify failed" in caplog.text)
            await restart("good")
            ack = await bus.publish(KnowledgeShared(topic="back", content="x"), identity=writer)
            assert ack.seq == 1
            await restart("bad")
            await wait_until(lambda: "certificate verify failed" in caplog.text)
    finally:
        await stop(proc)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda c: TLS(ca=c.ca, cert=c.clients[0].cert), "needs its key"),
        (lambda c: TLS(ca=c.ca, key=c.clients[0].key), "needs its key"),
        (lambda c: TLS(ca=42), "must be a file path"),
        (lambda c: TLS(ca=c.ca, hostname="bad host"), "not a host name"),
    ],
)
def test_an_inconsistent_tls_setting_is_refused_when_made(
    make: Any, match: str, certs: Any
) -> None:
    with pytest.raises(InvalidArgument, match=match) as refused:
        make(certs)
    assert refused.value.field == "tls"


async def test_unusable_tls_files_are_invalid_arguments_at_connect(
    tls_server: Served, certs: CertificateFiles, tmp_path: Path
) -> None:
    loose = tmp_path / "loose-key.pem"
    loose.write_bytes(certs.clients[0].key.read_bytes())
    loose.chmod(0o644)
    client = certs.clients[0]
    cases: list[tuple[Any, str]] = [
        (str(certs.ca), "expected eventwire.TLS or ssl.SSLContext, got str"),
        (TLS(ca=tmp_path / "missing.pem"), "no such file: .*missing.pem"),
        (TLS(ca=certs.ca, cert=client.cert, key=certs.ca), "cannot load the TLS files"),
        (TLS(ca=client.key), "cannot load the TLS files"),
        (TLS(ca=certs.ca, cert=client.cert, key=certs.server_key), "cannot load the TLS files"),
        (TLS(ca=certs.ca, cert=client.cert, key=loose), r"readable by others \(mode 0644\)"),
    ]
    for tls, match in cases:
        with pytest.raises(InvalidArgument, match=match) as refused:
            async with eventwire.connect(tls_server.login, tenant="acme", tls=tls):
                pass  # pragma: no cover - never connected
        assert refused.value.field == "tls"


def test_tls_from_the_environment(certs: CertificateFiles) -> None:
    assert TLS.from_env({"EVENTWIRE_URL": "nats://x"}) is None
    client = certs.clients[0]
    env = {
        "EVENTWIRE_TLS_CA": str(certs.ca),
        "EVENTWIRE_TLS_CERT": str(client.cert),
        "EVENTWIRE_TLS_KEY": str(client.key),
        "EVENTWIRE_TLS_HOSTNAME": "localhost",
    }
    assert TLS.from_env(env) == TLS(str(certs.ca), str(client.cert), str(client.key), "localhost")
    with pytest.raises(InvalidArgument, match="needs its key"):
        TLS.from_env({"EVENTWIRE_TLS_CERT": str(client.cert)})


async def test_the_cli_connects_over_tls_with_the_ca_from_the_environment(
    tls_server: Served, certs: CertificateFiles
) -> None:
    args = ("tenant", "provision", "acme", "--dir", str(tls_server.deployment.path))
    env = {"EVENTWIRE_URL": tls_server.login}
    code, out = await cli(*args, env=env)
    assert code == 1
    assert out.startswith("error: cannot connect to nats://***@127.0.0.1:")
    assert "TLS: the server's certificate is not accepted" in out
    assert out.count("\n") == 1
    assert tls_server.admin.password not in out
    code, out = await cli(*args, env={**env, "EVENTWIRE_TLS_CA": str(certs.ca)})
    assert code == 0, out
    assert out.startswith("consumers provisioned for tenant acme")  # no warning before it
    assert "┃ agent ┃ consumer ┃ pattern ┃" in out


# -- certificates ------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_ca_a_server_and_clients_with_private_keys(tmp_path: Path) -> None:
    made = init_certificates(
        tmp_path / "certs", hosts=["n1", "10.0.0.7", "LOCALHOST"], clients=["ops", "ops"]
    )
    assert made.hosts == ("n1", "10.0.0.7", "localhost", "127.0.0.1")
    assert [client.name for client in made.clients] == ["ops"]
    assert sorted(p.name for p in made.directory.iterdir()) == [
        "ca-key.pem", "ca.pem", "client-ops-key.pem", "client-ops.pem",
        "server-key.pem", "server.pem",
    ]  # fmt: skip
    assert _mode(made.directory) == 0o700
    for key in (made.ca_key, made.server_key, made.clients[0].key):
        assert _mode(key) == 0o600
    for cert in (made.ca, made.server_cert, made.clients[0].cert):
        assert _mode(cert) == 0o644
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(name.value) for name in names] == ["n1", "10.0.0.7", "localhost", "127.0.0.1"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = x509.load_pem_x509_certificate(made.ca.read_bytes())
    server.verify_directly_issued_by(ca)
    x509.load_pem_x509_certificate(made.clients[0].cert.read_bytes()).verify_directly_issued_by(ca)


def test_init_never_overwrites(certs: CertificateFiles) -> None:
    before = {path: path.read_bytes() for path in certs.directory.iterdir()}
    with pytest.raises(CertificateError, match=r"refusing to overwrite .*ca\.pem"):
        init_certificates(certs.directory, clients=["other"])
    assert {path: path.read_bytes() for path in certs.directory.iterdir()} == before


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"hosts": ["bad host"]}, "hosts"),
        ({"hosts": ["-x.example"]}, "hosts"),
        ({"hosts": "n1"}, "hosts"),
        ({"clients": ["no/slash"]}, "clients"),
        ({"clients": "ops"}, "clients"),
        ({"days": 0}, "days"),
        ({"days": 100_000}, "days"),
    ],
)
def test_init_refuses_bad_input(tmp_path: Path, options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        init_certificates(tmp_path / "certs", **options)
    assert refused.value.field == field
    assert not (tmp_path / "certs").exists()


async def test_cli_init_writes_the_files_once(tmp_path: Path) -> None:
    code, out = await cli("tls", "init", "--host", "n1", "--client", "ops", cwd=tmp_path)
    assert code == 0, out
    assert "server certificate for n1, localhost, 127.0.0.1" in out
    made = tmp_path / "deploy" / "secrets" / "certs"  # the default, git-ignored in the repo
    assert _mode(made / "server-key.pem") == 0o600
    code, out = await cli("tls", "init", cwd=tmp_path)
    assert (code, out.count("\n")) == (1, 1)
    assert out.startswith("error: refusing to overwrite ")
    code, out = await cli("tls", "init", "--dir", str(tmp_path / "x"), "--host", "a b")
    assert (code, out) == (1, "error: hosts: 'a b' is not a DNS name or an IP address\n")


# -- rendered configs, checked by nats-server itself -----------------------------------------


def _valid(config: Path) -> None:
    checked = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "is valid" in checked.stdout + checked.stderr


async def test_cluster_and_node_configs_pass_the_servers_own_check(
    tls_server: Served, certs: CertificateFiles, tmp_path: Path
) -> None:
    deployment = str(tls_server.deployment.path)
    code, out = await cli(
        "tls", "cluster", "--dir", deployment, "--out", str(tmp_path / "cluster"),
        "--tls-dir", str(certs.directory), "--store", str(tmp_path / "data"), "--verify-clients",
    )  # fmt: skip
    assert code == 0, out
    for node in ("n1", "n2", "n3"):
        text = (tmp_path / "cluster" / f"{node}.conf").read_text()
        assert f'server_name: "{node}"' in text
        assert "nats-route://n" in text
        assert f"nats-route://{node}:" not in text
        _valid(tmp_path / "cluster" / f"{node}.conf")
    out_file = tmp_path / "node.conf"
    code, out = await cli(
        "tenant", "render", "--dir", deployment, "--out", str(out_file),
        "--tls-dir", str(certs.directory), "--port", "14222", "--server-name", "a",
        "--cluster-name", "ew", "--cluster-port", "16222",
        "--route", "nats-route://127.0.0.1:16223", "--route", "nats-route://127.0.0.1:16224",
    )  # fmt: skip
    assert code == 0, out
    assert _mode(out_file) == 0o600
    _valid(out_file)
    code, out = await cli(
        "tenant", "render", "--dir", deployment, "--out", str(out_file),
        "--tls-dir", str(certs.directory), "--cluster-port", "16222",
    )  # fmt: skip
    assert (code, out.count("\n")) == (1, 1)
    assert "cluster_name: routes and a cluster port need a name" in out


def test_compose_mounts_what_tls_init_and_tls_cluster_write() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    mounts = re.findall(r"^\s+- (\./deploy/[^:]+):(/\S+?)(?::ro)?$", compose, re.MULTILINE)
    for node in ("n1", "n2", "n3"):
        assert (f"./deploy/secrets/cluster/{node}.conf", "/etc/nats/eventwire.conf") in mounts
    for name in ("ca.pem", "server.pem", "server-key.pem"):
        assert mounts.count((f"./deploy/secrets/certs/{name}", f"/etc/nats/certs/{name}")) == 3
    assert not any("ca-key" in host for host, _ in mounts)  # the CA's key stays out
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "eventwire tls init --host n1 --host n2 --host n3" in compose
    assert "eventwire tls cluster --dir deploy/secrets/deployment" in compose


async def test_the_cluster_command_needs_a_tenant(tmp_path: Path) -> None:
    code, out = await cli("tls", "cluster", "--dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert (code, out.count("\n")) == (1, 1)
    assert "no tenant yet" in out
    assert not await asyncio.to_thread((tmp_path / "deploy").exists)
