"""Self-update: verified downloads (TUF), A/B install, health check and rollback."""
