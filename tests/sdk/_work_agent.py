"""A summarizer agent in its own process, for the one-of-N kill test:
``python -m tests.sdk._work_agent CONFIG`` (a JSON file the test wrote).

It serves the capability ``summarize`` and handles its one-of-N work. Its handler leaves
two durable records, so the test can count across processes, the SIGKILLed one included:

* a **run**: one line ``<time> <agent> <event id>`` appended to ``runs/<agent>`` when the
  handler starts (one ``write`` on an ``O_APPEND`` descriptor: in the kernel once it
  returns, so it survives a SIGKILL of this process);
* an **effect**, at most once per event id across all processes: a file
  ``effects/<sha256(id)>`` holding ``<time> <agent> <event id>``, written aside and then
  hard-linked into place (``link`` fails if the name exists). A handler that finds the
  effect already there (a redelivery of an event whose effect a killed agent recorded)
  does nothing: that is the idempotent path.

With ``hold_after`` > 0, the first handler that recorded an effect after the first
``hold_after`` runs appends the event id to ``held/<agent>`` and never returns (the other
handlers go on): the test kills the process then, so one event is killed after its effect
and before its acknowledgement (0: never).

It prints ``serving <instance>`` once serving and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import eventwire
from eventwire import Agent, Event, Identity, Keyring, TrustedKey
from eventwire_security import Principal, PublicKey


class Record:
    """The durable record of one agent's handler runs and effects (see the module doc)."""

    def __init__(self, base: Path, agent: str) -> None:
        self.agent = agent
        self.effects = base / "effects"
        self.effects.mkdir(parents=True, exist_ok=True)
        runs = base / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        held = base / "held"
        held.mkdir(parents=True, exist_ok=True)
        self._runs = os.open(runs / agent, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._held = os.open(held / agent, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.count = 0

    def close(self) -> None:
        os.close(self._runs)
        os.close(self._held)

    def run(self, event_id: str) -> None:
        self.count += 1
        os.write(self._runs, f"{time.time():.6f} {self.agent} {event_id}\n".encode())

    def held(self, event_id: str) -> None:
        os.write(self._held, f"{time.time():.6f} {self.agent} {event_id}\n".encode())

    def effect(self, event_id: str) -> bool:
        """Record the effect of ``event_id`` unless it is recorded already (False then)."""
        name = hashlib.sha256(event_id.encode()).hexdigest()
        final = self.effects / name
        if final.exists():
            return False
        aside = self.effects / f".{self.agent}.{name}"
        aside.write_text(f"{time.time():.6f} {self.agent} {event_id}\n")
        try:
            os.link(aside, final)
        except FileExistsError:
            return False
        finally:
            aside.unlink()
        return True


def keyring_of(tenant: str, trusted: dict[str, str]) -> Keyring:
    return Keyring(
        [
            TrustedKey(PublicKey(bytes.fromhex(key)), Principal(tenant, name))
            for name, key in trusted.items()
        ]
    )


async def main(config: dict[str, Any]) -> None:
    tenant, name = config["tenant"], config["agent"]
    identity = Identity(Principal(tenant, name), bytes.fromhex(config["seed"]))
    record = Record(Path(config["out"]), name)
    agent = Agent(name, capabilities=["summarize"], identity=identity, max_in_flight=4)
    delay, hold_after = float(config["delay"]), int(config["hold_after"])
    holding: list[str] = []

    @agent.on("capability.summarize.help")
    async def summarize(event: Event) -> None:
        record.run(event.id)
        await asyncio.sleep(delay)  # the work: it is in flight meanwhile
        if record.effect(event.id) and 0 < hold_after < record.count and not holding:
            holding.append(event.id)
            record.held(event.id)
            await asyncio.Event().wait()  # hold the unacknowledged event until killed

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with (
            eventwire.connect(
                config["url"],
                tenant=tenant,
                root=config["root"],
                keyring=keyring_of(tenant, config["trusted"]),
                registry_ttl=float(config["registry_ttl"]),
            ) as bus,
            agent.serve(bus),
        ):
            print(f"serving {agent.instance}", flush=True)
            await stop.wait()
    finally:
        with contextlib.suppress(OSError):
            record.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
