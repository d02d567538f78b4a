"""Terminal agent: device drivers, status reporting, config apply, self-update."""
