"""200 workflows while the orchestrator process is SIGKILLed three times: every workflow
ends, no step acts twice, every history event verifies."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from eventwire import Workflows
from tests.conftest import TENANT, make_identity, wait_until
from tests.sdk._workflow_worker import Effects, Order, saga

if TYPE_CHECKING:
    import eventwire
    from eventwire import EmbeddedServer
    from eventwire_security import Identity

ROOT_DIR = Path(__file__).resolve().parents[2]
COUNT = 200


class OrchestratorProcess:
    """``tests/sdk/_workflow_worker.py`` in a subprocess, killed with SIGKILL."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.proc: asyncio.subprocess.Process | None = None

    async def start(
        self, server: EmbeddedServer, root: str, boss: Identity, others: list[Identity]
    ) -> None:
        self.out.unlink(missing_ok=True)
        trusted = ",".join(f"{i.principal.agent}:{i.public_key.raw.hex()}" for i in others)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.sdk._workflow_worker", server.url, root, TENANT,
            boss.seed.hex(), trusted, str(self.out),
            cwd=ROOT_DIR, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
        )  # fmt: skip
        await wait_until(lambda: self.out.exists() and "ready" in self.out.read_text(), timeout=30)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def test_workflows_survive_orchestrator_kills(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    effects = Effects()
    boss = make_identity("orchestrator", bus.keyring)
    user = make_identity("user", bus.keyring)
    workers = [make_identity(f"w{n}", bus.keyring) for n in (1, 2, 3)]
    for who in workers:
        await bus.serve_requests(who, effects.worker(bus, who.principal.agent).handle)
    control = Workflows(bus, user, orchestrators=[boss.principal.source])
    process = OrchestratorProcess(tmp_path / "orchestrator.txt")
    await process.start(nats_server, root, boss, [user, *workers])
    ids = [f"c{n}" for n in range(COUNT)]
    failing = set(ids[::5])  # every fifth fails at step 3 and is compensated
    sleeping = set(ids[::7])  # every seventh sleeps 1 s on a durable timer before step 3
    await asyncio.gather(*(
        control.start(saga, each, Order(
            item=each, fail_at=3 if each in failing else 0, sleep=1.0 if each in sleeping else 0
        ))
        for each in ids
    ))  # fmt: skip
    chance = random.Random(14)
    for _ in range(3):
        await asyncio.sleep(chance.uniform(0.2, 1.2))
        await process.kill()
        await process.start(nats_server, root, boss, [user, *workers])
    finals = await asyncio.gather(*(control.wait(each, timeout=120) for each in ids))
    await process.kill()

    states = {status.workflow_id: status.state for status in finals}
    assert {k for k, v in states.items() if v == "completed"} == set(ids) - failing
    assert {k for k, v in states.items() if v == "compensated"} == failing
    assert max(effects.done.values()) == 1  # no step acted twice
    assert max(effects.undone.values()) == 1
    assert sum(effects.done.values()) == 3 * (COUNT - len(failing)) + 2 * len(failing)
    assert sum(effects.undone.values()) == 2 * len(failing)
    for each in ids:  # every event verifies and is signed by the orchestrator
        timeline = await control.timeline(each)
        assert {entry.source for entry in timeline} == {boss.principal.source}
        fired = [entry for entry in timeline if entry.kind == "timer-fired"]
        assert len(fired) == (each in sleeping)  # each timer woke its workflow once
