"""Fixtures for the agent tests: a real Mosquitto per test."""

from collections.abc import Iterator

import pytest

from tests.services import mosquitto

USERS = {"fleet-server": "server-secret", "T-0001": "t1-secret", "T-0002": "t2-secret"}


def pytest_configure(config: pytest.Config) -> None:
    # Long tests still run in the default `pytest` (CI runs them); the mark lets a person
    # deselect them locally with -m "not slow".
    config.addinivalue_line("markers", "slow: takes a minute or more (the 60 s broker outage)")


def _broker(persistence: bool) -> Iterator[mosquitto.Broker]:
    if not mosquitto.available():
        pytest.skip("mosquitto is not installed (make test installs it: apt-get install mosquitto)")
    b = mosquitto.Broker(users=dict(USERS), persistence=persistence)
    b.start()
    yield b
    b.close()


@pytest.fixture
def broker() -> Iterator[mosquitto.Broker]:
    yield from _broker(persistence=False)


@pytest.fixture
def persistent_broker() -> Iterator[mosquitto.Broker]:
    """A broker that keeps sessions and queued messages across its own restart."""
    yield from _broker(persistence=True)
