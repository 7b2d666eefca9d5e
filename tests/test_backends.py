"""EVENTWIRE_TEST_BACKEND: the binary by default, docker skipped with its reason where it
cannot run (never replaced by the binary), anything else a usage error. The pytest runs in
subprocesses point DOCKER_HOST at a socket that does not exist, so they see "no daemon"
whether or not this machine has Docker."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from eventwire import EmbeddedServer
from tests import _backends

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
NO_DAEMON = "unix:///nonexistent/eventwire-test/docker.sock"
# One test per fixture that starts a server: nats_server, own_server, nats_cluster.
FIXTURE_TESTS = (
    "tests/test_backends.py::test_server_fixture_is_of_the_selected_backend",
    "tests/sdk/test_durability.py",
    "tests/sdk/test_cluster.py::test_events_stream_has_three_replicas",
)


@pytest.fixture
def unprobed() -> Iterator[None]:
    """docker_problem() asks again, in this test and after it."""
    _backends.docker_problem.cache_clear()
    yield
    _backends.docker_problem.cache_clear()


def _pytest(*args: str, backend: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, _backends.VARIABLE: backend, "DOCKER_HOST": NO_DAEMON}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_default_backend_is_the_binary() -> None:
    assert _backends.selected({}) == "binary"
    assert _backends.selected({_backends.VARIABLE: ""}) == "binary"
    assert _backends.selected({_backends.VARIABLE: "binary"}) == "binary"
    assert _backends.selected({_backends.VARIABLE: " docker "}) == "docker"


@pytest.mark.parametrize("value", ["podman", "Docker", "bin", "binary,docker"])
def test_unknown_backend_is_a_usage_error(value: str) -> None:
    with pytest.raises(pytest.UsageError) as info:
        _backends.selected({_backends.VARIABLE: value})
    assert str(info.value) == (
        f"EVENTWIRE_TEST_BACKEND={value!r} is not a test backend; use one of: binary, docker"
    )


async def test_server_fixture_is_of_the_selected_backend(nats_server: EmbeddedServer) -> None:
    assert nats_server.url.startswith("nats://127.0.0.1:")
    if _backends.selected() == "binary":
        assert type(nats_server) is EmbeddedServer
    else:
        assert type(nats_server).__name__ == "NatsContainer"


def test_binary_backend_needs_nothing_more(unprobed: None) -> None:
    _backends.require("binary")  # does not skip, and does not ask Docker
    assert _backends.docker_problem.cache_info().currsize == 0


def test_docker_without_a_daemon_skips_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, unprobed: None
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DAEMON)
    with pytest.raises(pytest.skip.Exception) as info:
        _backends.require("docker")
    assert str(info.value).startswith("EVENTWIRE_TEST_BACKEND=docker but no Docker daemon: ")
    assert "nonexistent" in str(info.value) or "No such file" in str(info.value)


def test_docker_without_testcontainers_skips_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, unprobed: None
) -> None:
    monkeypatch.setitem(sys.modules, "testcontainers.core.docker_client", None)
    with pytest.raises(pytest.skip.Exception) as info:
        _backends.require("docker")
    assert str(info.value).startswith(
        "EVENTWIRE_TEST_BACKEND=docker but testcontainers is not installed "
        "(pip install -e '.[docker]'): "
    )


@pytest.mark.parametrize(
    ("docker_host", "remote"),
    [
        ("", False),
        ("unix:///var/run/docker.sock", False),
        ("tcp://127.0.0.1:2375", False),
        ("tcp://localhost:2376", False),
        ("tcp://10.0.0.5:2375", True),
        ("ssh://ci@build-host", True),
    ],
)
def test_only_a_daemon_on_this_machine_is_used(docker_host: str, remote: bool) -> None:
    problem = _backends._remote_daemon(docker_host)
    assert (problem is not None) == remote
    if remote:
        assert problem == f"the Docker daemon is not on this machine (DOCKER_HOST={docker_host})"


def test_docker_backend_without_a_daemon_skips_every_server_fixture(tmp_path: Path) -> None:
    """A whole pytest run: each fixture that starts a server skips its tests with the
    reason, none errors and none falls back to the binary."""
    report = tmp_path / "report.xml"
    run = _pytest(f"--junitxml={report}", *FIXTURE_TESTS, backend="docker")
    assert run.returncode == 0, run.stdout + run.stderr
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {case.get("name"): [child.tag for child in case] for case in cases}
    assert outcomes == {
        "test_server_fixture_is_of_the_selected_backend": ["skipped"],
        "test_no_acknowledged_event_is_lost_across_a_server_crash": ["skipped"],
        "test_events_stream_has_three_replicas": ["skipped"],
    }
    messages = {skip.get("message") for skip in ET.parse(report).getroot().iter("skipped")}
    assert len(messages) == 1
    (message,) = messages
    assert message is not None
    assert message.startswith("EVENTWIRE_TEST_BACKEND=docker but no Docker daemon: ")


def test_unknown_backend_stops_the_run() -> None:
    run = _pytest("--collect-only", "-q", *FIXTURE_TESTS, backend="podman")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert "EVENTWIRE_TEST_BACKEND='podman' is not a test backend" in run.stderr
    assert "collected" not in run.stdout
