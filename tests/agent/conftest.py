"""Fixtures for the agent tests: a real Mosquitto per test."""

from collections.abc import Iterator

import pytest

from tests.services import mosquitto


@pytest.fixture
def broker() -> Iterator[mosquitto.Broker]:
    if not mosquitto.available():
        pytest.skip("mosquitto is not installed (make test installs it: apt-get install mosquitto)")
    b = mosquitto.Broker(
        users={"fleet-server": "server-secret", "T-0001": "t1-secret", "T-0002": "t2-secret"}
    )
    b.start()
    yield b
    b.close()
