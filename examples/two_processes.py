"""Two agents in two processes, each signing with the key it keeps across restarts.

Run it with ``python examples/two_processes.py`` (it exits 0). It does what you would do by
hand, in this order:

1. start a nats-server (here an embedded one on a free loopback port; yours: ``--url``);
2. write an encrypted key file per agent (``eventwire keys generate``) and export each
   public key (``eventwire keys export-public``) for the other agent to trust;
3. run each agent in its own process: ``eventwire run two_processes:summarizer
   --key-file summarizer.key --keyring researcher.json --url ...`` (``python -m eventwire``
   here, the same command);
4. restart the summarizer: it signs with the same key, so the researcher, which never
   restarted, still accepts its answers. A summarizer that made a new key on each start
   would have its events refused by the researcher as ``unknown-key``.

The agents below are what ``eventwire run`` imports; the orchestration is in ``main()``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path

from eventwire import (
    Agent,
    AgentLifecycle,
    EmbeddedServer,
    Event,
    HelpRequested,
    Identity,
    TaskCompleted,
    write_key_entry,
)
from eventwire_security import write_identity

TENANT = "acme"
HERE = Path(__file__).resolve().parent
ROUNDS = 2  # one answer from the summarizer's first run, one from its restart
TIMEOUT = 60.0

# -- the agents (imported by `eventwire run two_processes:<name>` in each process) ---------

summarizer = Agent("summarizer", capabilities=["summarize"], tenant=TENANT)
researcher = Agent("researcher", tenant=TENANT)
answers: list[TaskCompleted] = []


@summarizer.on("capability.summarize.help")
async def summarize(event: Event) -> None:
    question = event.parse(HelpRequested).question
    words = question.split()
    summary = f"{len(words)} words, about {words[-1]} (summarizer run {summarizer.instance})"
    await summarizer.publish(TaskCompleted(task_type="summarize", task_id=event.id, result=summary))


@researcher.on("agent.lifecycle.started")
async def ask_each_summarizer(event: Event) -> None:
    """Every time a summarizer (re)starts, ask it something."""
    started = event.parse(AgentLifecycle)
    if started.agent == "summarizer":
        question = "please summarize the JetStream docs"
        await researcher.publish(HelpRequested(capability="summarize", question=question))


@researcher.on("task.summarize.completed")
async def done(event: Event) -> None:
    answers.append(event.parse(TaskCompleted))
    print(f"answer {len(answers)} from {event.source} (key {event.signer_kid[:12]}...): "
          f"{answers[-1].result!r}", flush=True)  # fmt: skip
    if len(answers) == ROUNDS:
        researcher.stop()  # `eventwire run` then stops cleanly and exits 0


# -- the orchestration: what you would type in three terminals -------------------------------


def write_keys(directory: Path, passphrase: bytes) -> None:
    """`eventwire keys generate` and `eventwire keys export-public`, for both agents."""
    for name in ("summarizer", "researcher"):
        identity = Identity.generate(TENANT, name)
        write_identity(directory / f"{name}.key", identity, passphrase)  # encrypted, 0600
        write_key_entry(str(directory / f"{name}.json"), identity)  # the public half


Process = asyncio.subprocess.Process


async def start(name: str, trusts: str, url: str, keys: Path, env: dict[str, str]) -> Process:
    command = [
        sys.executable, "-m", "eventwire", "run", f"two_processes:{name}",
        "--app-dir", str(HERE), "--url", url, "--log-level", "warning",
        "--key-file", str(keys / f"{name}.key"), "--keyring", str(keys / f"{trusts}.json"),
    ]  # fmt: skip
    pipe = asyncio.subprocess.PIPE if name == "researcher" else None
    return await asyncio.create_subprocess_exec(*command, env=env, stdout=pipe)


async def stop(process: Process, name: str) -> None:
    process.send_signal(signal.SIGTERM)  # what `kill` or Ctrl-C does
    code = await asyncio.wait_for(process.wait(), TIMEOUT)
    print(f"{name} stopped on SIGTERM, exit code {code}")
    if code != 0:
        raise SystemExit(f"{name} exited {code}")


async def next_answer(researcher_process: Process) -> None:
    assert researcher_process.stdout is not None
    line = await asyncio.wait_for(researcher_process.stdout.readline(), TIMEOUT)
    print(f"researcher: {line.decode().strip()}")


async def orchestrate(url: str, keys: Path, env: dict[str, str]) -> None:
    first = await start("summarizer", "researcher", url, keys, env)
    asking = await start("researcher", "summarizer", url, keys, env)
    processes = [first, asking]
    try:
        await next_answer(asking)
        await stop(first, "summarizer")
        second = await start("summarizer", "researcher", url, keys, env)  # same key file
        processes.append(second)
        await next_answer(asking)
        code = await asyncio.wait_for(asking.wait(), TIMEOUT)
        print(f"researcher stopped itself after {ROUNDS} answers, exit code {code}")
        if code != 0:
            raise SystemExit(f"researcher exited {code}")
        await stop(second, "summarizer")
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def main() -> None:
    # The key files' passphrase reaches `eventwire run` in EVENTWIRE_KEY_PASSPHRASE; a real
    # deployment takes it from its secret store instead of making one up.
    passphrase = secrets.token_urlsafe(16)
    env = os.environ | {"EVENTWIRE_KEY_PASSPHRASE": passphrase}
    with tempfile.TemporaryDirectory(prefix="eventwire-keys-") as directory:
        keys = Path(directory)
        write_keys(keys, passphrase.encode())
        async with EmbeddedServer() as server:
            print(f"nats-server on {server.url}; keys in {keys}")
            await orchestrate(server.url, keys, env)


if __name__ == "__main__":
    asyncio.run(main())
