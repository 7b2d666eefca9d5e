"""``eventwire.testing`` as a user meets it: registered by its ``pytest11`` entry point, its
fixtures work in a user's test file (run here with ``pytester`` in a fresh pytest process),
in pytest-asyncio's strict and auto modes, with warnings as errors; ``import eventwire``
never imports pytest."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import asyncio

import pytest

from eventwire import Agent, Event, HelpRequested, KnowledgeShared, RetryPolicy, TaskCompleted


@pytest.mark.asyncio
async def test_request_and_answer(eventwire_harness):
    agent = Agent("summarizer", capabilities=["summarize"])  # tenant "default", like the bus

    @agent.on("capability.summarize.help")
    async def answer(event: Event) -> None:
        await agent.publish(TaskCompleted(task_type="summarize", task_id=event.id))

    async with eventwire_harness.run(agent):
        ack = await eventwire_harness.publish(HelpRequested(capability="summarize", question="?"))
        [done] = await eventwire_harness.received("task.summarize.completed", timeout=10)
    assert done.causationid == ack.event_id


@pytest.mark.asyncio
async def test_redelivered_then_dead_lettered(eventwire_harness):
    agent = eventwire_harness.agent("worker")
    calls = []

    @agent.on("task.>", retry=RetryPolicy(max_deliveries=2, initial_delay=0.05))
    async def fail(event: Event) -> None:
        calls.append(event.id)
        raise RuntimeError("boom")

    async with eventwire_harness.run(agent):
        ack = await eventwire_harness.publish(TaskCompleted(task_type="t", task_id="1"))
        [letter] = await eventwire_harness.dead_letters(1)
    assert calls == [ack.event_id, ack.event_id]
    assert (letter.reason, letter.deliveries) == ("max-deliveries", 2)


@pytest.mark.asyncio
async def test_forged_is_refused(eventwire_harness, eventwire_identity):
    mallory = eventwire_identity("mallory", trusted=False)
    await eventwire_harness.publish(KnowledgeShared(topic="x", content="c"), as_=mallory)
    await eventwire_harness.publish(KnowledgeShared(topic="y", content="c"), as_="alice")
    [event] = await eventwire_harness.received("knowledge.>")
    assert event.subject == "knowledge.y"
    assert [r.reason for r in eventwire_harness.refused] == ["unknown-key"]


@pytest.mark.asyncio
async def test_roots_differ(eventwire_bus, eventwire_server):
    assert eventwire_bus.url == eventwire_server.url
    ROOTS.append(eventwire_bus.root)
    assert len(set(ROOTS)) == len(ROOTS)


@pytest.mark.asyncio
async def test_roots_differ_again(eventwire_bus):
    ROOTS.append(eventwire_bus.root)
    assert len(set(ROOTS)) == len(ROOTS) == 2


ROOTS = []
"""


def _run(pytester: pytest.Pytester, ini: str, *args: str) -> pytest.RunResult:
    pytester.makeini(f"[pytest]\nfilterwarnings = error\n{ini}")
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", *args, timeout=180)


def test_the_plugin_is_registered_by_its_entry_point() -> None:
    plugins = importlib.metadata.entry_points(group="pytest11")
    [entry] = [plugin for plugin in plugins if plugin.name == "eventwire"]
    assert entry.value == "eventwire.testing"


def test_a_users_tests_pass_in_strict_mode_with_function_loops(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        "asyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "asyncio_default_test_loop_scope = function",
    )
    result.assert_outcomes(passed=5)


def test_a_users_tests_pass_in_auto_mode_with_a_session_loop(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
        "asyncio_default_test_loop_scope = session",
    )
    result.assert_outcomes(passed=5)


def test_without_the_plugin_the_fixtures_are_not_there(pytester: pytest.Pytester) -> None:
    ini = "asyncio_mode = strict\nasyncio_default_fixture_loop_scope = function"
    result = _run(pytester, ini, "-p", "no:eventwire")
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines(["*fixture 'eventwire_*' not found*"])


def test_a_failed_wait_fails_the_test_with_what_arrived(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nfilterwarnings = error\nasyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = function"
    )
    pytester.makepyfile(
        test_wait="""
        async def test_nothing_comes(eventwire_harness):
            await eventwire_harness.received("task.>", timeout=0.3)
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*NotReceived: expected 1 event(s) on 'task.>', got 0 (nothing)*"])


def test_importing_eventwire_does_not_import_pytest_or_the_plugin() -> None:
    probe = "import eventwire, sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    modules = set(json.loads(out))
    assert "eventwire" in modules
    assert not {"pytest", "_pytest", "pytest_asyncio", "eventwire.testing"} & modules


def test_without_pytest_asyncio_the_fixtures_say_what_to_install(pytester: pytest.Pytester) -> None:
    """The entry point is installed with eventwire, the extra may not be: pytest still runs,
    and a test asking for a fixture fails with the fix."""
    pytester.makeini("[pytest]\nfilterwarnings = error")
    pytester.mkpydir("pytest_asyncio").joinpath("__init__.py").write_text(
        "raise ImportError('not installed here', name='pytest_asyncio')\n"
    )
    pytester.makepyfile(
        test_missing="""
        def test_plain():
            assert True

        def test_needs_the_bus(eventwire_bus):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixtures need pytest-asyncio: pip install 'eventwire*"])
