"""Agent releases for terminals: the fleet's TUF repository (signed metadata and bundles)."""
