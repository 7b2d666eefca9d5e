"""``eventwire projections list | status | rebuild`` on a real server (typer's CliRunner, in
process: the commands run their own event loop, so these tests are synchronous)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

import eventwire
from eventwire import Identity, Keyring, Projection
from eventwire.cli import app
from eventwire_security import KeyEntry
from tests.conftest import TENANT, make_identity
from tests.sdk.test_projections import FEED, Balances, expected, fill

if TYPE_CHECKING:
    from pathlib import Path

    from eventwire import EmbeddedServer

HERE = "tests.sdk.test_projections_cli"
TELLER: list[Identity] = []  # the identity the --model factory signs checkpoints as


def balances(bus: eventwire.Bus) -> Projection[Balances]:
    """The --model factory: ``tests.sdk.test_projections_cli:balances``."""
    return Projection(bus, Balances, name="balances", identity=TELLER[0], feed=FEED)


def wrong_name(bus: eventwire.Bus) -> Projection[Balances]:
    return Projection(bus, Balances, name="other", identity=TELLER[0], feed=FEED)


@pytest.fixture
def teller() -> Identity:
    identity = make_identity("teller", Keyring())
    TELLER[:] = [identity]
    return identity


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def where(server: EmbeddedServer, root: str) -> tuple[str, ...]:
    return ("--url", server.url, "--root", root, "--tenant", TENANT)


def built(server: EmbeddedServer, root: str, teller: Identity, count: int) -> int:
    """``count`` deposits and the projection run over them; the stream's last sequence."""

    async def main() -> int:
        keyring = Keyring.of(teller)
        async with eventwire.connect(server.url, tenant=TENANT, root=root, keyring=keyring) as bus:
            last = await fill(bus, teller, count)
            async with balances(bus) as projection, asyncio.timeout(10):
                await projection.wait_for(last)
            return last

    return asyncio.run(main())


def more(server: EmbeddedServer, root: str, teller: Identity, count: int, start: int) -> int:
    async def main() -> int:
        keyring = Keyring.of(teller)
        async with eventwire.connect(server.url, tenant=TENANT, root=root, keyring=keyring) as bus:
            return await fill(bus, teller, count, start=start)

    return asyncio.run(main())


def as_json(out: str) -> Any:
    return json.loads(out)


def test_list_without_projections(nats_server: EmbeddedServer, root: str) -> None:
    code, out = run("projections", "list", *where(nats_server, root))
    assert code == 0, out
    assert "no projections" in out
    code, out = run("projections", "list", *where(nats_server, root), "--json")
    assert (code, as_json(out)) == (0, [])


def test_list_and_status_show_checkpoint_lag_and_signer(
    nats_server: EmbeddedServer, root: str, teller: Identity, tmp_path: Path
) -> None:
    last = built(nats_server, root, teller, 6)
    code, out = run("projections", "list", *where(nats_server, root), "--json")
    assert code == 0, out
    [info] = as_json(out)
    assert (info["name"], info["seq"], info["applied"], info["lag"]) == ("balances", last, 6, 0)
    assert info["signer"] == f"{TENANT}/teller"
    assert info["verified"] is None  # the signer's key was not given
    newest = more(nats_server, root, teller, 3, 6)
    entry = tmp_path / "teller.json"
    entry.write_text(json.dumps(KeyEntry.from_trusted(teller.trusted()).to_json()))
    trust = ("--trust", str(entry))
    code, out = run(
        "projections", "status", "balances", *where(nats_server, root), *trust, "--json"
    )
    assert code == 0, out
    status = as_json(out)
    assert (status["lag"], status["stream_last_seq"], status["verified"]) == (3, newest, True)
    code, out = run("projections", "status", "balances", *where(nats_server, root))
    assert code == 0, out
    assert "unknown key" in out
    assert str(last) in out


def test_rebuild_resets_then_rebuilds_with_the_model(
    nats_server: EmbeddedServer, root: str, teller: Identity, tmp_path: Path
) -> None:
    last = built(nats_server, root, teller, 8)
    code, out = run("projections", "rebuild", "balances", *where(nats_server, root))
    assert code == 0, out
    assert "rebuilds from the first event on its next start" in out
    code, out = run("projections", "status", "balances", *where(nats_server, root), "--json")
    assert as_json(out)["reset"] is True
    code, out = run("projections", "list", *where(nats_server, root))
    assert "reset: rebuilds on its next start" in out
    model = ("--model", f"{HERE}:balances", "--json")
    code, out = run("projections", "rebuild", "balances", *where(nats_server, root), *model)
    assert code == 1  # without the signer's key every event is refused: that fails
    assert '"refused": 8' in out
    assert "8 events refused" in out
    entry = tmp_path / "teller.json"
    entry.write_text(json.dumps(KeyEntry.from_trusted(teller.trusted()).to_json()))
    trust = ("--trust", str(entry))
    args = ("balances", *where(nats_server, root), *model, *trust)
    code, out = run("projections", "rebuild", *args)
    assert code == 0, out
    result = as_json(out)
    assert (result["rebuilt"], result["applied"], result["seq"]) == (True, 8, last)
    assert result["refused"] == 0

    async def state() -> dict[str, int]:
        keyring = Keyring.of(teller)
        async with (
            eventwire.connect(nats_server.url, tenant=TENANT, root=root, keyring=keyring) as bus,
            balances(bus) as projection,
        ):
            assert projection.applied == 8  # restored from the rebuilt checkpoint
            return projection.state.balances

    assert asyncio.run(state()) == expected(8)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("status", "nobody"), 1, "no projection 'nobody'"),
        (("status", "not.a.name"), 1, "not a valid name"),
        (("rebuild", "balances", "--model", "nocolon"), 2, "module:attr"),
        (("rebuild", "balances", "--model", "tests.nowhere:x"), 2, "No module"),
        (("rebuild", "balances", "--model", "tests.sdk.test_projections_cli:TELLER"), 2, "not a"),
        (
            ("rebuild", "balances", "--model", "tests.sdk.test_projections_cli:wrong_name"),
            1,
            "other",
        ),
    ],
)
def test_bad_input_is_one_line(
    nats_server: EmbeddedServer, root: str, args: tuple[str, ...], code: int, says: str
) -> None:
    got, out = run("projections", *args, *where(nats_server, root))
    assert got == code, out
    assert says in out
    assert "Traceback" not in out
