"""Fleet server and operator tools for self-service licence terminals."""
