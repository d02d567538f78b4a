"""Desired state on the server: each terminal's configuration computed from layers (defaults <-
hardware model <- site <- terminal), and the signed documents that carry it to the agents."""
