"""Which NATS the test fixtures start: the ``nats-server`` binary (the default, and CI) or
the official ``nats`` image through testcontainers, chosen by ``EVENTWIRE_TEST_BACKEND``.

This module is the one place that reads the variable. ``docker`` without testcontainers or
without a Docker daemon skips the tests that need a server, with the reason; it never
falls back to the binary. Container code lives in ``tests/_containers.py``, imported only
when ``docker`` is selected (testcontainers stays an optional extra).
"""

from __future__ import annotations

import functools
import gc
import os
import urllib.parse
import warnings
from typing import TYPE_CHECKING, Literal

import pytest

from eventwire import EmbeddedCluster, EmbeddedServer

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

VARIABLE = "EVENTWIRE_TEST_BACKEND"
Backend = Literal["binary", "docker"]
BACKENDS: tuple[Backend, ...] = ("binary", "docker")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def selected(environ: Mapping[str, str] | None = None) -> Backend:
    """The backend named by ``EVENTWIRE_TEST_BACKEND`` (unset or empty: ``binary``).

    Any other value is a usage error: a typo must not quietly run the other backend.
    """
    value = (os.environ if environ is None else environ).get(VARIABLE, "").strip()
    if not value:
        return "binary"
    for backend in BACKENDS:
        if value == backend:
            return backend
    raise pytest.UsageError(
        f"{VARIABLE}={value!r} is not a test backend; use one of: {', '.join(BACKENDS)}"
    )


@functools.cache
def docker_problem() -> str | None:
    """Why the docker backend cannot run here (None: it can). Asked once per session."""
    try:
        from testcontainers.core.docker_client import DockerClient  # noqa: F401
    except ImportError as exc:
        return f"testcontainers is not installed (pip install -e '.[docker]'): {exc}"
    with warnings.catch_warnings():
        # docker-py does not close the socket of a connection that failed (no daemon):
        # collect it here, where its ResourceWarning is expected, not in a later test.
        warnings.simplefilter("ignore", ResourceWarning)
        problem = _ask_docker()
        gc.collect()
    return problem


def _ask_docker() -> str | None:
    from testcontainers.core.docker_client import DockerClient

    try:
        client = DockerClient()  # asks the daemon its API version: fails without one
        try:
            client.client.ping()
        finally:
            client.client.close()
    except Exception as exc:  # docker.errors.DockerException, requests' errors, OSError, ...
        return f"no Docker daemon: {exc}"
    return _remote_daemon(os.environ.get("DOCKER_HOST", ""))


def _remote_daemon(docker_host: str) -> str | None:
    """Containers publish their ports on 127.0.0.1 of the daemon's machine: this one only."""
    parsed = urllib.parse.urlparse(docker_host)
    if parsed.scheme in {"tcp", "http", "https", "ssh"} and parsed.hostname not in LOCAL_HOSTS:
        return f"the Docker daemon is not on this machine (DOCKER_HOST={docker_host})"
    return None


def require(backend: Backend) -> None:
    """Skip the calling test (from a fixture) when ``backend`` cannot run here."""
    if backend == "docker" and (problem := docker_problem()) is not None:
        pytest.skip(reason=f"{VARIABLE}=docker but {problem}")


def server(store: Path, backend: Backend | None = None) -> EmbeddedServer:
    """A not yet started JetStream server of the selected backend (``async with`` it).

    ``store`` is the binary's store directory; a container keeps its store inside itself,
    which survives its kill and restart, as the directory survives the binary's.
    """
    backend = backend or selected()
    require(backend)
    if backend == "binary":
        return EmbeddedServer(store_dir=store)
    from tests._containers import single_server

    return single_server()


def cluster(base_dir: Path, backend: Backend | None = None) -> EmbeddedCluster:
    """A not yet started 3-node JetStream cluster of the selected backend."""
    backend = backend or selected()
    require(backend)
    if backend == "binary":
        return EmbeddedCluster(base_dir=base_dir)
    from tests._containers import ContainerCluster

    return ContainerCluster()
