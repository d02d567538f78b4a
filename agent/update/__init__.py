"""Self-update: verified downloads (TUF), A/B install, health check and rollback.

Kept import-free: the launcher (agent.update.launcher) must start without the MQTT or TUF stacks.
"""
