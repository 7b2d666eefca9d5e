"""Stand-ins for the plugin's fixtures where pytest-asyncio is not installed: each fails the
test that asks for it with the fix, instead of breaking every pytest run of the environment."""

from __future__ import annotations

from typing import NoReturn

import pytest

_HOW = "eventwire's pytest fixtures need pytest-asyncio: pip install 'eventwire[testing]'"


def _missing() -> NoReturn:
    pytest.fail(_HOW, pytrace=False)


@pytest.fixture(scope="session")
def eventwire_server() -> NoReturn:
    _missing()


@pytest.fixture
def eventwire_tenant() -> NoReturn:
    _missing()


@pytest.fixture
def eventwire_root() -> NoReturn:
    _missing()


@pytest.fixture
def eventwire_keyring() -> NoReturn:
    _missing()


@pytest.fixture
def eventwire_identity() -> NoReturn:
    _missing()


@pytest.fixture
def eventwire_refused() -> NoReturn:
    _missing()


@pytest.fixture
def eventwire_bus() -> NoReturn:
    _missing()


@pytest.fixture
def eventwire_harness() -> NoReturn:
    _missing()
