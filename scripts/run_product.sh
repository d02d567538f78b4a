#!/bin/sh
# The product on one machine: `fleet serve` (its own Mosquitto, SQLite, dev mode, data in .demo/)
# with 50 simulated terminals; prints the API URL and an operator token. Ctrl-C stops it all.
set -eu
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/fleet" demo-fleet --dir .demo/fleet --terminals "${TERMINALS:-50}" "$@"
