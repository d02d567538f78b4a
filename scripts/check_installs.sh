#!/usr/bin/env bash
# Each install the README names works alone, proven by running its commands in a fresh virtual
# environment of the machine's python3 (no .venv, no system site-packages):
#   .[auditor]  fleet verify: a signed text against a trust list, and --images on a drawn QR code
#   .[server]   fleet serve / tokens --help, then fleet serve (dev mode) answering /healthz, a token
#               made with `fleet tokens`, and `fleet config get` through the API client
#   .[agent]    fleet-agent --help, check-config on packaging/agent.example.toml, and a real
#               fleet-agent run (simulated devices) whose status report reaches a Mosquitto
# The wheel is built once with maturin in the same environment as scripts/setup.sh's
# `maturin develop`, so cargo reuses its release build instead of rebuilding PyO3 (~30 s).
# Usage: scripts/check_installs.sh [auditor|server|agent ...]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=("$@")
[ ${#EXTRAS[@]} -gt 0 ] || EXTRAS=(auditor server agent)

# /tmp and 0755: the server's Mosquitto drops to the `mosquitto` user and must read its folder.
WORK=$(mktemp -d /tmp/fleet-check-installs.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

started=$SECONDS
say() { printf 'check-installs: [%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() {
  printf 'check-installs: FAILED: %s\n' "$*" >&2
  exit 1
}
# `expect_in TEXT WORDS WHAT`: fail unless WORDS occur in TEXT.
expect_in() { [[ "$1" == *"$2"* ]] || fail "$3: expected '$2' in: ${1:0:600}"; }
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# `wait_for SECONDS CMD...`: run CMD every 0.2 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
# `absent VENV MODULE...`: none of MODULE can be imported there (the install really is alone).
absent() {
  local venv=$1
  shift
  "$venv/bin/python" - "$@" <<'EOF' || fail "$venv has $* (not a fresh, separate install?)"
import importlib.util, sys
found = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]
sys.exit(f"present: {found}" if found else 0)
EOF
}
new_venv() { # `new_venv NAME EXTRA`: a fresh venv with WHEEL[EXTRA]; prints its path
  local venv=$WORK/$1
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$WHEEL[$2]" >"$WORK/$1-pip.log" 2>&1 \
    || { cat "$WORK/$1-pip.log" >&2; fail "pip install '$WHEEL[$2]'"; }
  echo "$venv"
}

"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 11), sys.version' \
  || fail "$PYTHON is not Python 3.11+"
# rustup's cargo may be missing from a non-login shell's PATH (as in scripts/setup.sh).
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
say "building the wheel"
mkdir -p "$WORK/dist"
VIRTUAL_ENV="$ROOT/$VENV" PATH="$ROOT/$VENV/bin:$PATH" \
  "$VENV/bin/maturin" build --release --locked -q -o "$WORK/dist" >"$WORK/maturin.log" 2>&1 \
  || { cat "$WORK/maturin.log" >&2; fail "maturin build"; }
WHEEL=$(ls "$WORK"/dist/kiosk_fleet-*.whl)
say "built $(basename "$WHEEL")"

check_auditor() {
  say "auditor: pip install '.[auditor]'"
  local v d out
  v=$(new_venv auditor auditor)
  d=$WORK/auditor-files
  mkdir -p "$d/images"
  absent "$v" httpx fastapi pydantic tortoise paho
  "$v/bin/fleet" --help >/dev/null
  out=$("$v/bin/fleet" verify --help)
  expect_in "$out" "usage: fleet verify" "fleet verify --help"
  # An issuer's key and trust list, one signed licence: what an auditor is handed.
  "$v/bin/fleet" keys generate --alg EdDSA --out "$d/key.pem" --public "$d/pub.pem" >/dev/null
  "$v/bin/fleet" keys trust-list --issuer CN-510107 --out "$d/trust.json" "$d/pub.pem"
  cat >"$d/claims.json" <<'EOF'
{"iss": "CN-510107", "lic": {"uscc": "92510107MA6CQ8T15F", "name": "成都市武侯区蓉香小吃店",
 "kind": "个体工商户", "rep": "王秀英", "addr": "四川省成都市武侯区玉林北路12号附3号",
 "est": "2024-03-18", "term": "WH-HALL-07"}}
EOF
  "$v/bin/fleet" sign --key "$d/key.pem" "$d/claims.json" >"$d/licence.txt"
  out=$("$v/bin/fleet" verify --trust "$d/trust.json" "$d/licence.txt") \
    || fail "fleet verify of a genuine licence: exit $?: $out"
  expect_in "$out" "valid" "fleet verify"
  expect_in "$out" "成都市武侯区蓉香小吃店" "fleet verify"
  # The same licence as a printed QR code, found in an image (zxing-cpp, Pillow).
  "$v/bin/python" -c 'import sys, rust_core
open(sys.argv[2], "wb").write(rust_core.qr_png(open(sys.argv[1]).read().strip(), 4))' \
    "$d/licence.txt" "$d/images/licence.png"
  out=$("$v/bin/fleet" verify --trust "$d/trust.json" --images "$d/images" --csv "$d/report.csv") \
    || fail "fleet verify --images: exit $?: $out"
  expect_in "$out" "licence.png	valid" "fleet verify --images"
  [ -s "$d/report.csv" ] || fail "fleet verify --images --csv wrote no report"
  # A server command here says which install it needs, without a traceback.
  if out=$("$v/bin/fleet" serve --help 2>&1); then fail "fleet serve ran in the auditor's install"; fi
  expect_in "$out" "pip install 'kiosk-fleet[server]'" "fleet serve in the auditor's install"
  say "auditor: ok"
}

check_server() {
  say "server: pip install '.[server]'"
  local v d port url pid token out
  v=$(new_venv server server)
  absent "$v" httpx
  out=$("$v/bin/fleet" serve --help)
  expect_in "$out" "usage: fleet serve" "fleet serve --help"
  out=$("$v/bin/fleet" tokens --help)
  expect_in "$out" "usage: fleet tokens" "fleet tokens --help"
  command -v mosquitto >/dev/null || fail "mosquitto is not installed (scripts/setup.sh installs it)"
  d=$WORK/server-data
  mkdir -m 755 "$d"
  port=$(free_port)
  url=http://127.0.0.1:$port
  # Dev mode: keys and secrets made on first start; its own Mosquitto on loopback.
  export FLEET_DEV_MODE=1 FLEET_DATA_DIR=$d FLEET_API_PORT=$port
  (cd "$WORK" && exec "$v/bin/fleet" serve --log-level warning) >"$WORK/serve.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  healthy() { "$v/bin/python" -c 'import json, sys, urllib.request as u
o = u.build_opener(u.ProxyHandler({}))
sys.exit(json.load(o.open(sys.argv[1] + "/healthz", timeout=2))["status"] != "ok")' "$url"; }
  wait_for 45 healthy || { cat "$WORK/serve.log" >&2; fail "fleet serve did not answer $url/healthz"; }
  token=$("$v/bin/fleet" tokens create --role admin --name check-installs | head -n1 | cut -d' ' -f1)
  out=$("$v/bin/fleet" config get defaults --url "$url" --token "$token") \
    || fail "fleet config get through the API: $out"
  expect_in "$out" "status_interval_s" "fleet config get defaults"
  kill -TERM "$pid"
  wait "$pid" || fail "fleet serve did not stop cleanly on SIGTERM (exit $?)"
  unset FLEET_DEV_MODE FLEET_DATA_DIR FLEET_API_PORT
  say "server: ok"
}

check_agent() {
  say "agent: pip install '.[agent]'"
  local v d out mport broker agent
  v=$(new_venv agent agent)
  absent "$v" fastapi pydantic tortoise httpx PIL
  out=$("$v/bin/fleet-agent" --help)
  expect_in "$out" "check-config" "fleet-agent --help"
  "$v/bin/fleet-sim" --help >/dev/null
  "$v/bin/python" -c 'import agent.drivers.ipp, agent.drivers.escpos, agent.drivers.pcsc
import agent.update.tuf_client, agent.update.worker, agent.update.launcher'
  # The packaged example, its paths moved into a scratch folder holding the files it names.
  d=$WORK/agent-files
  mkdir -p "$d/etc" "$d/var"
  sed -e "s|/etc/fleet-agent|$d/etc|g" -e "s|/var/lib/fleet-agent|$d/var|g" \
    packaging/agent.example.toml >"$d/example.toml"
  "$v/bin/python" -c 'import sys, rust_core
open(sys.argv[1], "w").write(rust_core.SigningKey.generate().public_pem())' "$d/etc/fleet-config.pub"
  echo "secret" >"$d/etc/mqtt-password"
  : >"$d/etc/fleet-ca.pem"
  echo "{}" >"$d/etc/update-root.json"
  out=$("$v/bin/fleet-agent" check-config --config "$d/example.toml" 2>&1) \
    || fail "fleet-agent check-config: $out"
  expect_in "$out" "OK" "fleet-agent check-config"
  # A real run: simulated printer and reader, a local Mosquitto, one status report received.
  command -v mosquitto_sub >/dev/null || fail "mosquitto_sub is not installed (mosquitto-clients)"
  mport=$(free_port)
  mosquitto -p "$mport" >"$WORK/mosquitto.log" 2>&1 &
  broker=$!
  PIDS+=("$broker")
  cat >"$d/run.toml" <<EOF
terminal_id = "T-CHECK"
data_dir = "$d/run"
[broker]
url = "mqtt://127.0.0.1:$mport"
password = "unused"
[intervals]
status_interval_s = 1
poll_interval_s = 1
debounce_s = 1
[printer]
driver = "sim"
[reader]
driver = "sim"
EOF
  wait_for 10 "$v/bin/python" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$mport" \
    || fail "mosquitto did not start"
  "$v/bin/fleet-agent" run --config "$d/run.toml" >"$WORK/agent.log" 2>&1 &
  agent=$!
  PIDS+=("$agent")
  out=$(mosquitto_sub -p "$mport" -t fleet/v1/t/T-CHECK/status -C 1 -W 30) \
    || { cat "$WORK/agent.log" >&2; fail "no status report from fleet-agent run"; }
  expect_in "$out" '"seq"' "fleet-agent status report"
  kill -TERM "$agent"
  wait "$agent" || fail "fleet-agent did not stop cleanly on SIGTERM (exit $?)"
  say "agent: ok"
}

for extra in "${EXTRAS[@]}"; do
  case $extra in
    auditor | server | agent) "check_$extra" ;;
    *) fail "unknown extra '$extra' (auditor, server, agent)" ;;
  esac
done
say "every install works alone (${EXTRAS[*]})"
