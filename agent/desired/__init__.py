"""Desired state on the terminal: the signed document contract, and applying it atomically."""
