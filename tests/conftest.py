"""Shared fixtures: a real nats-server on a random 127.0.0.1 port, a fresh subject root per test."""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING

import pytest

import eventwire
from eventwire import EmbeddedCluster, EmbeddedServer, Identity, Keyring
from tests import _backends

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

TENANT = "acme"


def pytest_configure(config: pytest.Config) -> None:
    """An unknown ``EVENTWIRE_TEST_BACKEND`` stops the run before collection."""
    _backends.selected()


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedServer]:
    """One JetStream server for the session (of ``EVENTWIRE_TEST_BACKEND``: the binary or
    a container); tests isolate themselves by subject root."""
    store: Path = tmp_path_factory.mktemp("nats")
    async with _backends.server(store) as server:
        yield server


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """A JetStream server of the selected backend for one test, which may kill it
    (SIGKILL, or docker kill) and start it again on the same port and store."""
    async with _backends.server(tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
async def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedCluster]:
    """A 3-node JetStream cluster of the selected backend, for a module's tests."""
    async with _backends.cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def root() -> str:
    """A subject root no other test uses, so each test has its own stream and buckets."""
    return "t" + secrets.token_hex(5)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring()


@pytest.fixture
async def bus(
    nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> AsyncIterator[eventwire.Bus]:
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, keyring=keyring, root=root, registry_ttl=2.0
    ) as connected:
        yield connected


def make_identity(agent: str, keyring: Keyring | None = None, tenant: str = TENANT) -> Identity:
    """A fresh identity, trusted by ``keyring`` when one is given."""
    identity = Identity.generate(tenant, agent)
    if keyring is not None:
        keyring.add(identity.trusted())
    return identity


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail the test with a clear message after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state that no event announces
            await asyncio.sleep(0.01)
