"""Fleet simulator: N simulated terminals, each with its own MQTT connection, in one process."""

from agent.sim.cli import main

__all__ = ["main"]
