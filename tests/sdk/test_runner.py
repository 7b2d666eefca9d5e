"""``eventwire run MODULE:ATTR`` and ``agent.run(bus)`` as a user runs them: in their own
process, stopped by SIGTERM or SIGINT (``kill``, Ctrl-C in a terminal).

A clean stop exits 0 without a traceback, publishes ``agent.lifecycle.stopped``, and leaves
no nats-server process (its PID is gone) and no temporary store; a second signal exits at
once (130/143), also killing the embedded server; handler failures are logged on stderr
without any logging set up by the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import eventwire
from eventwire import AgentLifecycle, Event, Identity, Keyring, TaskCompleted, write_key_entry
from eventwire_security import write_identity
from tests.sdk._runner_app import FAILURE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from eventwire import EmbeddedServer

REPO = Path(__file__).resolve().parents[2]
EVENTWIRE = str(Path(sys.executable).parent / "eventwire")
APP = "tests.sdk._runner_app"
PASSPHRASE = "correct horse battery staple"
EMBEDDED = re.compile(r"embedded nats-server pid (\d+) on (\S+), store (\S+) ")
SCRIPT_SERVER = re.compile(r"embedded server pid (\d+) store (\S+)")
TIMEOUT = 60.0
STEP_FAILED = re.compile(r"(stopping agent|closing bus) .* failed")  # a close step's warning


@dataclass
class Proc:
    """A process of the test, with what it wrote so far."""

    proc: asyncio.subprocess.Process
    err: list[str] = field(default_factory=list)
    out: list[str] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    async def wait_for(self, text: str, *, where: str = "stderr") -> None:
        """Until ``text`` is written (fails with the output if the process exits first)."""
        async with asyncio.timeout(TIMEOUT):
            while text not in getattr(self, where):
                if self.proc.returncode is not None:
                    await asyncio.sleep(0.2)  # the last lines
                    if text in getattr(self, where):
                        return
                    pytest.fail(f"exited {self.proc.returncode} before {text!r}:\n{self.stderr}")
                await asyncio.sleep(0.02)

    def signal(self, sig: signal.Signals, *, group: bool = False) -> None:
        if group:  # as Ctrl-C in a terminal: the whole foreground process group
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    async def exit_code(self) -> int:
        return await asyncio.wait_for(self.proc.wait(), TIMEOUT)

    def embedded(self) -> tuple[int, str, Path]:
        """The embedded nats-server's pid, URL and store, as the runner logged them."""
        found = EMBEDDED.search(self.stderr)
        assert found, self.stderr
        return int(found[1]), found[2], Path(found[3])


async def _read(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    assert stream is not None
    async for line in stream:
        into.append(line.decode(errors="replace"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTWIRE_")}
    return env | extra


@contextlib.asynccontextmanager
async def started(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Proc]:
    """The process, in its own process group, with its output read as it comes; killed
    (with any embedded server it logged) if the test ends before it does."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=REPO, env=env or _env(), start_new_session=True,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    watched = Proc(proc)
    async with asyncio.TaskGroup() as group:
        group.create_task(_read(proc.stdout, watched.out))
        group.create_task(_read(proc.stderr, watched.err))
        try:
            yield watched
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
                if found := EMBEDDED.search(watched.stderr):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(found[1]), signal.SIGKILL)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_cleaned_up(pid: int, store: Path) -> None:
    assert gone(pid), f"nats-server {pid} is still running"
    assert not store.exists(), f"{store} was left behind"


SIGNALS = [
    pytest.param(signal.SIGTERM, False, id="SIGTERM"),
    pytest.param(signal.SIGINT, False, id="SIGINT"),
    pytest.param(signal.SIGINT, True, id="ctrl-c"),  # to the process group, as a terminal does
]


@pytest.mark.parametrize(("sig", "group"), SIGNALS)
async def test_run_on_the_embedded_server_stops_cleanly(sig: signal.Signals, group: bool) -> None:
    async with started(EVENTWIRE, "run", f"{APP}:agent") as runner:
        await runner.wait_for("agent worker serving as acme/worker")
        pid, _, store = runner.embedded()
        assert not gone(pid)
        assert store.is_dir()
        runner.signal(sig, group=group)
        assert await runner.exit_code() == 0, runner.stderr
    assert_cleaned_up(pid, store)
    assert "agent worker stopped" in runner.stderr
    assert "Traceback" not in runner.stderr
    assert " ERROR " not in runner.stderr
    assert not STEP_FAILED.search(runner.stderr), runner.stderr  # no step of the stop failed


async def test_ctrl_c_stops_the_agents_before_the_embedded_server(keys: Keys) -> None:
    # A terminal sends SIGINT to the whole foreground process group: the embedded server
    # must not get it, or it would be gone under the handler still running (and the stop).
    env = _env(EVENTWIRE_KEY_PASSPHRASE=PASSPHRASE)
    async with started(EVENTWIRE, "run", f"{APP}:agent", *keys.args(), env=env) as runner:
        await runner.wait_for("agent worker serving")
        pid, url, store = runner.embedded()
        async with eventwire.connect(url, tenant="acme", keyring=keys.keyring) as bus:
            await bus.publish(TaskCompleted(task_type="nap", task_id="1"), identity=keys.tester)
        await runner.wait_for("nap started")
        runner.signal(signal.SIGINT, group=True)
        assert await runner.exit_code() == 0, runner.stderr
    assert_cleaned_up(pid, store)
    assert "nap done" in runner.stderr
    assert "agent worker stopped" in runner.stderr
    assert " ERROR " not in runner.stderr, runner.stderr
    assert not STEP_FAILED.search(runner.stderr), runner.stderr


@dataclass
class Keys:
    """Key files on disk: the worker's (encrypted) and the tester's public entry."""

    worker: Identity
    tester: Identity
    worker_file: Path
    tester_file: Path

    @property
    def keyring(self) -> Keyring:
        return Keyring.of(self.worker, self.tester)

    def args(self) -> list[str]:
        return ["--key-file", str(self.worker_file), "--keyring", str(self.tester_file)]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    worker, tester = Identity.generate("acme", "worker"), Identity.generate("acme", "tester")
    write_identity(tmp_path / "worker.key", worker, PASSPHRASE.encode())
    write_key_entry(str(tmp_path / "tester.json"), tester)
    return Keys(worker, tester, tmp_path / "worker.key", tmp_path / "tester.json")


def _phases(events: list[Event], instance: str | None = None) -> list[str]:
    found = [event.parse(AgentLifecycle) for event in events]
    return [info.phase for info in found if instance is None or info.instance == instance]


@pytest.mark.parametrize(("sig", "group"), SIGNALS)
async def test_a_stopped_runner_publishes_lifecycle_stopped_and_logs_failures_and_refusals(
    nats_server: EmbeddedServer, root: str, keys: Keys, sig: signal.Signals, group: bool
) -> None:
    seen: list[Event] = []

    async def observe(event: Event) -> None:
        seen.append(event)

    args = ["--url", nats_server.url, "--root", root, *keys.args()]
    env = _env(EVENTWIRE_KEY_PASSPHRASE=PASSPHRASE)
    async with (
        eventwire.connect(nats_server.url, tenant="acme", root=root, keyring=keys.keyring) as bus,
        bus.subscribe("agent.lifecycle.*", observe, durable="observer"),
        started(EVENTWIRE, "run", f"{APP}:agent", *args, env=env) as runner,
    ):
        await runner.wait_for("agent worker serving")
        await _until(lambda: _phases(seen) == ["started"])
        started_event = seen[0]
        assert started_event.signer_kid == keys.worker.kid  # the key file's key
        instance = started_event.parse(AgentLifecycle).instance
        await bus.publish(TaskCompleted(task_type="boom", task_id="1"), identity=keys.tester)
        await runner.wait_for(FAILURE)
        stranger = Identity.generate("acme", "stranger")  # in no keyring of the runner's
        await bus.publish(TaskCompleted(task_type="boom", task_id="2"), identity=stranger)
        await runner.wait_for(f"kid={stranger.kid}")
        runner.signal(sig, group=group)
        assert await runner.exit_code() == 0, runner.stderr
        await _until(lambda: _phases(seen, instance) == ["started", "stopped"])
    logged = runner.stderr.split("ERROR   eventwire.agent: worker: handler boom failed", 1)
    assert len(logged) == 2, runner.stderr  # logged at ERROR, by default...
    assert logged[1].split("\n", 1)[1].startswith("Traceback (most recent call last)")
    assert f"RuntimeError: {FAILURE}" in logged[1]  # ...with its traceback
    refused = next(line for line in runner.err if f"kid={stranger.kid}" in line)
    assert "WARNING" in refused
    assert ": unknown-key (" in refused  # with its reason


async def _until(predicate: object, timeout: float = TIMEOUT) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state that no event announces
            await asyncio.sleep(0.02)


async def _hang_a_handler(runner: Proc, keys: Keys, url: str, root: str = "ew") -> None:
    """Publish the event the worker's slow handler hangs on, and wait until it runs."""
    async with eventwire.connect(url, tenant="acme", root=root, keyring=keys.keyring) as bus:
        await bus.publish(TaskCompleted(task_type="slow", task_id="1"), identity=keys.tester)
    await runner.wait_for("slow handler started")


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [(signal.SIGTERM, signal.SIGTERM, 143), (signal.SIGTERM, signal.SIGINT, 130)],
    ids=["TERM-TERM", "TERM-INT"],
)
async def test_a_second_signal_exits_at_once_and_kills_the_embedded_server(
    keys: Keys, first: signal.Signals, second: signal.Signals, code: int
) -> None:
    env = _env(EVENTWIRE_KEY_PASSPHRASE=PASSPHRASE)
    run = [EVENTWIRE, "run", f"{APP}:agent", *keys.args(), "--drain-timeout", "3600"]
    async with started(*run, env=env) as runner:
        await runner.wait_for("agent worker serving")
        pid, url, store = runner.embedded()
        await _hang_a_handler(runner, keys, url)
        runner.signal(first)
        await runner.wait_for("a second SIGINT or SIGTERM exits at once")
        runner.signal(second)
        assert await runner.exit_code() == code, runner.stderr
    assert_cleaned_up(pid, store)
    assert "exiting at once" in runner.stderr
    assert "Traceback" not in runner.stderr


async def test_the_drain_is_bounded(nats_server: EmbeddedServer, root: str, keys: Keys) -> None:
    seen: list[Event] = []

    async def observe(event: Event) -> None:
        seen.append(event)

    env = _env(EVENTWIRE_KEY_PASSPHRASE=PASSPHRASE)
    args = ["--url", nats_server.url, "--root", root, *keys.args(), "--drain-timeout", "0.5"]
    async with (
        eventwire.connect(nats_server.url, tenant="acme", root=root, keyring=keys.keyring) as bus,
        bus.subscribe("agent.lifecycle.*", observe, durable="observer"),
        started(EVENTWIRE, "run", f"{APP}:agent", *args, env=env) as runner,
    ):
        await runner.wait_for("agent worker serving")
        await _hang_a_handler(runner, keys, nats_server.url, root)
        runner.signal(signal.SIGTERM)
        assert await runner.exit_code() == 0, runner.stderr
        await _until(lambda: _phases(seen)[-1:] == ["stopped"])
    assert "1 handlers still running at the drain timeout: cancelled" in runner.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_agent_run_in_a_script_handles_signals_and_restores_them(
    sig: signal.Signals,
) -> None:
    async with started(sys.executable, "-m", "tests.sdk._run_script") as script:
        await script.wait_for("agent solo serving")  # logged on stderr by default
        script.signal(sig)
        assert await script.exit_code() == 0, script.stderr
        await script.wait_for("run returned, bus closed", where="stdout")
    assert "handlers restored" in script.stdout
    found = SCRIPT_SERVER.search(script.stdout)
    assert found, script.stdout
    assert_cleaned_up(int(found[1]), Path(found[2]))
    assert "Traceback" not in script.stderr
    assert "agent solo stopped" in script.stderr


@pytest.mark.parametrize(
    ("target", "names"),
    [("pair", ["first", "second"]), ("made_later", ["later"])],
    ids=["factory", "async-factory"],
)
async def test_run_serves_what_a_factory_returns(target: str, names: list[str]) -> None:
    async with started(EVENTWIRE, "run", f"{APP}:{target}", "--log-level", "info") as runner:
        for name in names:
            await runner.wait_for(f"agent {name} serving")
        runner.signal(signal.SIGTERM)
        assert await runner.exit_code() == 0, runner.stderr
    for name in names:
        assert f"agent {name} stopped" in runner.stderr


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    async with started(EVENTWIRE, "run", *args, env=env) as proc:
        code = await proc.exit_code()
    return code, proc.stderr + proc.stdout  # complete: the readers finished with the pipes


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["no-colon"], 2, "is not MODULE:ATTR"),
        (["tests.sdk.no_such_module:agent"], 1, "cannot import 'tests.sdk.no_such_module'"),
        ([f"{APP}:missing"], 1, "has no attribute 'missing'"),
        ([f"{APP}:not_an_agent"], 1, "expected an Agent"),
        ([f"{APP}:agent", "--tenant", "globex"], 1, "the agents are of tenant 'acme'"),
        ([f"{APP}:agent", "--log-level", "loud"], 2, "loud"),
        ([f"{APP}:agent", "--keyring", "/nonexistent.json"], 1, "cannot read"),
    ],
)
async def test_bad_input_is_one_line(args: list[str], code: int, message: str) -> None:
    status, output = await _cli(*args)
    assert status == code, output
    assert message in output
    assert "Traceback" not in output


async def test_key_file_problems_are_one_line(keys: Keys, tmp_path: Path) -> None:
    other = Identity.generate("acme", "stranger")
    write_identity(tmp_path / "stranger.key", other, PASSPHRASE.encode())
    key = str(keys.worker_file)
    cases = [
        (["--key-file", key], {}, 2, "set EVENTWIRE_KEY_PASSPHRASE"),
        (["--key-file", key], {"EVENTWIRE_KEY_PASSPHRASE": "wrong"}, 1, "error:"),
        (
            ["--key-file", str(tmp_path / "stranger.key")],
            {"EVENTWIRE_KEY_PASSPHRASE": PASSPHRASE},
            1,
            "no agent here is named 'stranger'",
        ),
    ]
    for args, extra, code, message in cases:
        status, output = await _cli(f"{APP}:agent", *args, env=_env(**extra))
        assert status == code, output
        assert message in output
        assert "Traceback" not in output
        assert len(output.strip().splitlines()) == 1, output


HEALTH_URL = re.compile(r"health on (http://\S+) ")
METRICS_URL = re.compile(r"metrics on (http://\S+)")


def _text(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


async def _status(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(_text, url)


async def test_run_serves_the_agents_health_and_metrics_for_orchestrators() -> None:
    args = ("--health-port", "0", "--metrics-port", "0")
    async with started(EVENTWIRE, "run", f"{APP}:pair", *args) as runner:
        await runner.wait_for("agent second serving")
        await runner.wait_for("agent first serving")
        health_found = HEALTH_URL.search(runner.stderr)
        metrics_found = METRICS_URL.search(runner.stderr)
        assert health_found, runner.stderr
        assert metrics_found, runner.stderr
        health = health_found[1]
        for path in ("/healthz", "/readyz"):
            status, body = await _status(health + path)
            assert status == 200, body
            answer = json.loads(body)
            assert (answer["live"], answer["ready"], answer["subject"]) == (
                True, True, "run (first, second)",
            )  # fmt: skip
        status, text = await _status(metrics_found[1])
        assert status == 200
        assert "# HELP eventwire_events_published_total " in text
        runner.signal(signal.SIGTERM)
        assert await runner.exit_code() == 0, runner.stderr
    with pytest.raises(urllib.error.URLError):  # the endpoint went with the run
        _text(health + "/healthz")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--health-port", "70000"), "port: must be an int from 0 to 65535"),
        (("--metrics-port", "-1"), "port: must be an int from 0 to 65535"),
    ],
)
async def test_run_refuses_a_bad_endpoint_port_in_one_line(
    args: tuple[str, ...], said: str
) -> None:
    async with started(EVENTWIRE, "run", f"{APP}:agent", *args) as runner:
        assert await runner.exit_code() != 0
    assert said in runner.stderr, runner.stderr
    assert "Traceback" not in runner.stderr


async def test_run_says_when_the_health_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        async with started(EVENTWIRE, "run", f"{APP}:agent", "--health-port", port) as runner:
            assert await runner.exit_code() != 0
    assert f"cannot serve health on 127.0.0.1:{port}" in runner.stderr, runner.stderr
    assert "Traceback" not in runner.stderr
