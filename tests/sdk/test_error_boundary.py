"""The error boundary on real servers: typed errors from connect() and the dead-letter queue,
and a command line that answers every failure with one line, never a traceback or a password.

"At once" is shown without a clock: the connect timeout is a minute, and the error is the
refusal itself (its cause, its message), not the timeout's.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
import pytest

import eventwire
from eventwire import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    DeadLetterError,
    DeadLetterNotFound,
    EmbeddedServer,
    InvalidArgument,
    NotFound,
    NotProvisioned,
    ServerUnavailable,
    TransportError,
)
from eventwire_security import (
    InvalidName,
    KeyFileLocked,
    PolicyError,
    SecurityError,
    read_identity,
    write_identity,
)
from tests.conftest import TENANT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

PASSWORD = "hunter2-not-in-any-message"
PATIENT = 60.0  # a connect timeout no test waits for: the errors below come first


@pytest.fixture(scope="module")
async def auth(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedServer]:
    """A JetStream server that admits only alice with PASSWORD."""
    server = EmbeddedServer(
        store_dir=tmp_path_factory.mktemp("auth"),
        extra_args=("--user", "alice", "--pass", PASSWORD),
    )
    async with server:
        yield server


def with_user(url: str, user: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"


def closed_port() -> int:
    """A loopback port where nothing listens (bound for a moment, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_no_secret(error: BaseException) -> None:
    for text in (str(error), repr(error), str(getattr(error, "url", ""))):
        assert PASSWORD not in text


# -- connect() -------------------------------------------------------------------------------


def test_a_bad_tenant_is_an_invalid_argument_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        eventwire.connect("nats://127.0.0.1:4222", tenant="bad tenant")
    assert caught.value.field == "tenant"
    assert isinstance(caught.value, ConfigError)
    assert not isinstance(caught.value, SecurityError)
    assert isinstance(caught.value.__cause__, InvalidName)


async def test_a_bad_agent_name_or_request_target_is_an_invalid_argument(
    bus: eventwire.Bus,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        eventwire.Agent("two words")
    assert caught.value.field == "agent"
    assert isinstance(caught.value.__cause__, InvalidName)
    alice = eventwire.Identity.generate(TENANT, "alice")
    for target in ("a b", "a.b", "", "bob>"):
        with pytest.raises(InvalidArgument) as caught:
            await bus.request(target, eventwire.CustomEvent("custom.x", "x"), identity=alice)
        assert caught.value.field == "target"


def test_a_bad_connection_name_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=r"^name: 'two words' is not a connection name"):
        eventwire.connect("nats://127.0.0.1:4222", name="two words")


async def test_a_refused_connection_fails_at_once_without_the_password() -> None:
    url = f"nats://alice:{PASSWORD}@127.0.0.1:{closed_port()}"
    with pytest.raises(ConnectionFailed) as caught:
        async with eventwire.connect(url, tenant=TENANT, connect_timeout=PATIENT):
            pass
    error = caught.value
    assert type(error) is eventwire.ConnectionRefused
    assert isinstance(error.__cause__, ConnectionRefusedError)
    assert str(error) == (
        f"cannot connect to nats://***@127.0.0.1:{url.rsplit(':', 1)[1]}: "
        "connection refused (is the server running, on this port?)"
    )
    assert error.url is not None
    assert error.url.startswith("nats://***@")
    assert_no_secret(error)


async def test_a_wrong_password_fails_at_once_without_the_password(auth: EmbeddedServer) -> None:
    wrong = with_user(auth.url, "alice", PASSWORD[::-1])
    for url in (wrong, auth.url):  # a wrong password, and none at all
        with pytest.raises(AuthenticationFailed) as caught:
            async with eventwire.connect(url, tenant=TENANT, connect_timeout=PATIENT):
                pass
        assert "the server refused the credentials ('Authorization Violation')" in str(caught.value)
        assert isinstance(caught.value.__cause__, nats.errors.Error)
        assert PASSWORD[::-1] not in str(caught.value)
    async with eventwire.connect(with_user(auth.url, "alice", PASSWORD), tenant=TENANT) as bus:
        assert await bus.dead_letters.list() == []


async def test_a_server_without_jetstream_is_unavailable(tmp_path: Path) -> None:
    async with EmbeddedServer(store_dir=tmp_path, extra_args=("-js=false",)) as plain:
        with pytest.raises(ServerUnavailable) as caught:
            async with eventwire.connect(plain.url, tenant=TENANT):
                pass
    assert str(caught.value) == (
        "opening the bus (streams, buckets): "
        "JetStream did not answer (is it enabled for this account?)"
    )
    assert isinstance(caught.value.__cause__, nats.js.errors.ServiceUnavailableError)


async def test_a_lost_server_gives_a_typed_error_with_the_nats_cause(
    own_server: EmbeddedServer, root: str
) -> None:
    async with eventwire.connect(own_server.url, tenant=TENANT, root=root) as bus:
        await own_server.kill()
        with pytest.raises(TransportError) as caught:
            await bus.dead_letters.list()
        assert isinstance(caught.value.__cause__, nats.errors.Error)


# -- the dead-letter queue -------------------------------------------------------------------


async def test_an_empty_dead_letter_queue_lists_and_purges_nothing(bus: eventwire.Bus) -> None:
    assert await bus.dead_letters.list() == []
    assert await bus.dead_letters.purge() == 0
    assert await bus.dead_letters.list(limit=0) == []


async def test_a_missing_dead_letter_is_a_typed_not_found(bus: eventwire.Bus) -> None:
    for seq in (0, -1):  # no sequence below 1: refused without asking the server
        with pytest.raises(DeadLetterNotFound, match=f"^no dead letter {seq}$") as caught:
            await bus.dead_letters.get(seq)
        assert caught.value.seq == seq
    with pytest.raises(DeadLetterNotFound) as caught:
        await bus.dead_letters.redrive(1)
    assert isinstance(caught.value, DeadLetterError | NotFound | LookupError)
    assert isinstance(caught.value.__cause__, nats.js.errors.NotFoundError)


async def test_bad_dead_letter_arguments_are_invalid_arguments(bus: eventwire.Bus) -> None:
    with pytest.raises(InvalidArgument, match=r"^limit: must be >= 0, got -1$"):
        await bus.dead_letters.list(limit=-1)
    with pytest.raises(InvalidArgument, match=r"^seq: expected an int, got str$"):
        await bus.dead_letters.get("1")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"^seq: expected an int, got bool$"):
        await bus.dead_letters.get(True)


async def test_a_deleted_dead_letter_stream_is_not_provisioned(bus: eventwire.Bus) -> None:
    await bus.jetstream.delete_stream(bus.dead_letters.stream)
    for call in (bus.dead_letters.list, bus.dead_letters.purge, lambda: bus.dead_letters.get(1)):
        with pytest.raises(NotProvisioned, match=f"stream '{bus.dead_letters.stream}'") as caught:
            await call()
        assert isinstance(caught.value.__cause__, nats.js.errors.NotFoundError)


# -- the command line ------------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, list[str]]:
    proc = await start_cli(*args)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode().strip().splitlines()


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eventwire.cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


async def test_dlq_commands_on_an_empty_queue(nats_server: EmbeddedServer, root: str) -> None:
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT)
    assert await run_cli("dlq", "list", *where) == (0, [f"no dead letters in {root}-dlq"])
    assert await run_cli("dlq", "show", "0", *where) == (1, ["error: no dead letter 0"])
    assert await run_cli("dlq", "show", "7", *where) == (1, ["error: no dead letter 7"])
    assert await run_cli("dlq", "purge", *where) == (0, ["purged 0 dead letters"])


async def test_cli_connection_errors_are_one_line_without_the_password(
    auth: EmbeddedServer, root: str
) -> None:
    refused = f"nats://alice:{PASSWORD}@127.0.0.1:{closed_port()}"
    code, lines = await run_cli("dlq", "list", "--url", refused, "--root", root)
    shown = refused.replace(f"alice:{PASSWORD}@", "***@")
    reason = "connection refused (is the server running, on this port?)"
    assert (code, lines) == (1, [f"error: cannot connect to {shown}: {reason}"])
    wrong = with_user(auth.url, "alice", PASSWORD[::-1])
    code, lines = await run_cli("dlq", "list", "--url", wrong, "--root", root)
    assert code == 1
    assert lines == [
        f"error: cannot connect to {auth.url.replace('://', '://***@')}: "
        "the server refused the credentials ('Authorization Violation')"
    ]


async def test_cli_debug_shows_the_traceback_still_without_the_password(root: str) -> None:
    refused = f"nats://alice:{PASSWORD}@127.0.0.1:{closed_port()}"
    code, lines = await run_cli("--debug", "dlq", "list", "--url", refused, "--root", root)
    text = "\n".join(lines)
    assert code == 1
    assert "Traceback (most recent call last)" in text
    assert "ConnectionRefused" in text
    assert lines[-1].startswith("error: cannot connect to nats://***@127.0.0.1:")
    assert PASSWORD not in text


async def test_cli_invalid_arguments_are_one_line(nats_server: EmbeddedServer, root: str) -> None:
    where = ("--url", nats_server.url, "--root", root)
    code, lines = await run_cli("dlq", "list", *where, "--tenant", "bad tenant")
    assert (code, len(lines)) == (1, 1)
    assert lines[0].startswith("error: tenant: 'bad tenant' is not a valid name")


async def test_ctrl_c_ends_a_command_with_one_line_and_130() -> None:
    """A server that accepts the connection and never says a word: the command waits for
    it; Ctrl-C (SIGINT) ends the wait."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        proc = await start_cli("dlq", "list", "--url", f"nats://127.0.0.1:{port}")
        await asyncio.wait_for(accepted.wait(), PATIENT)
        proc.send_signal(signal.SIGINT)
        out, _ = await proc.communicate()
    assert (proc.returncode, out.decode().strip().splitlines()) == (130, ["error: interrupted"])


def test_errors_of_the_security_package_are_eventwire_errors_too(tmp_path: Path) -> None:
    """One tree: a bad key file, policy or name is caught by ``except EventwireError``."""
    assert issubclass(SecurityError, eventwire.EventwireError)
    with pytest.raises(eventwire.EventwireError) as missing:
        eventwire.Policy.load(tmp_path / "missing.toml")
    assert isinstance(missing.value, PolicyError)
    assert isinstance(missing.value.__cause__, FileNotFoundError)
    bad = tmp_path / "bad.toml"
    bad.write_text("version = [")
    with pytest.raises(eventwire.EventwireError):
        eventwire.Policy.load(bad)
    with pytest.raises(eventwire.EventwireError):
        eventwire.Identity.generate("acme", "my agent")
    key = tmp_path / "bot.key"
    write_identity(key, eventwire.Identity.generate("acme", "bot"), passphrase=b"correct horse")
    with pytest.raises(eventwire.EventwireError) as locked:
        read_identity(key, passphrase=b"wrong horse!")
    assert isinstance(locked.value, KeyFileLocked)


async def test_each_connection_failure_is_its_own_type_at_once() -> None:
    """Refused, host not found, and (with a short timeout) no answer: distinct types under
    ConnectionFailed, without waiting for the connect timeout where the network answers."""
    with pytest.raises(eventwire.ConnectionRefused) as refused:
        async with eventwire.connect(f"nats://127.0.0.1:{closed_port()}", connect_timeout=60):
            pass
    assert isinstance(refused.value.__cause__, ConnectionRefusedError)
    with pytest.raises(eventwire.HostNotFound) as unknown:
        async with eventwire.connect("nats://no-such-host.invalid:4222", connect_timeout=60):
            pass
    assert isinstance(unknown.value.__cause__, socket.gaierror)
    assert unknown.value.url == "nats://no-such-host.invalid:4222"
    silent = socket.socket()  # listens, never answers: the connect times out
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        port = silent.getsockname()[1]
        with pytest.raises(eventwire.ConnectTimeout) as late:
            async with eventwire.connect(f"nats://127.0.0.1:{port}", connect_timeout=0.5):
                pass
    finally:
        silent.close()
    assert isinstance(late.value, TimeoutError)
    for error in (refused.value, unknown.value, late.value):
        assert isinstance(error, ConnectionFailed)

