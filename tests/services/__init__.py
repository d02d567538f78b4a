"""Real services started by the tests on loopback: Mosquitto, ippeveprinter, pcscd + vpcd."""
