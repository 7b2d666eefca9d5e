"""``eventwire workflows``: list, show, signal, cancel, retry against a live orchestrator."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from eventwire import write_key_entry
from eventwire_security import write_identity
from tests._processes import cli
from tests.conftest import TENANT, wait_until
from tests.sdk._workflow_worker import Order, approval, saga
from tests.sdk.test_workflow_control import orchestrator, team, until_steps

if TYPE_CHECKING:
    from pathlib import Path

    import eventwire
    from eventwire import EmbeddedServer

PASSPHRASE = "correct horse battery staple"


async def test_workflows_cli(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    async with team(bus) as (control, effects, boss), orchestrator(bus, boss):
        write_key_entry(str(tmp_path / "orchestrator.json"), boss)
        write_identity(tmp_path / "user.key", control.identity, PASSPHRASE.encode())
        where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT,
                 "--orchestrator", str(tmp_path / "orchestrator.json"))  # fmt: skip
        sender = ("--key-file", str(tmp_path / "user.key"))
        env = {"EVENTWIRE_KEY_PASSPHRASE": PASSPHRASE}
        waiting = await control.start(approval, "cli-1", Order(item="a"))
        effects.refuse.add("b-3")
        await control.start(saga, "cli-2", Order(item="b"))
        assert (await control.wait("cli-2", timeout=20)).state == "compensated"
        await until_steps(control, "cli-1", {1: "completed"})

        code, out = await cli("workflows", "list", *where, "--json")
        assert code == 0, out
        assert {w["id"]: w["state"] for w in json.loads(out)} == {
            "cli-1": "running", "cli-2": "compensated",
        }  # fmt: skip
        code, out = await cli("workflows", "list", *where, "--state", "compensated")
        assert code == 0, out
        assert "cli-2" in out
        assert "cli-1" not in out
        code, out = await cli("workflows", "show", "cli-2", *where)
        assert code == 0, out
        assert "compensation-completed" in out
        assert f"{TENANT}/orchestrator" in out

        code, out = await cli(
            "workflows", "signal", "cli-1", "approve", '"ok"', *where, *sender, env=env
        )
        assert code == 0, out
        assert (await waiting.result(timeout=20)).refs == ["w1:a", "ok"]
        effects.refuse.clear()
        code, out = await cli("workflows", "retry", "cli-2", *where, *sender, env=env)
        assert code == 0, out
        assert "retry of cli-2 sent" in out
        await wait_until(lambda: effects.done["b-3"] == 1, timeout=20)
        assert (await control.wait("cli-2", timeout=20)).state == "completed"
        code, out = await cli("workflows", "cancel", "cli-1", *where, *sender, env=env)
        assert code == 1
        assert "completed" in out
        code, out = await cli("workflows", "show", "nobody", *where)
        assert code == 1
        assert "no such workflow" in out
