#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: Debian packages, the Python venv, the Rust build.
# Used by `make run` and `make test` (so by CI); safe to run again: each step skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

# One set-up at a time: two at once would race on the venv and wait on cargo's lock anyway.
exec 9<"$0"
flock 9

# Debian packages the product and its tests need (services are started by the tests themselves).
APT_PACKAGES=(build-essential pkg-config
  mosquitto mosquitto-clients          # the MQTT broker the agent and server tests talk to
  cups-ipp-utils dbus-daemon           # ippeveprinter, a real IPP Everywhere printer (needs a D-Bus)
  pcscd vsmartcard-vpcd vsmartcard-vpicc   # PC/SC daemon, virtual reader and card emulator
  swig libpcsclite-dev                 # to build pyscard
  postgresql                           # the server's tests run on SQLite and on a real PostgreSQL
  chromium fonts-noto-cjk              # headless browser for tests/web (Playwright drives it), CJK fonts
  fonts-wqy-microhei                   # the printable licence's Chinese TrueType font (fpdf2 embeds it)
  poppler-utils)                       # pdftoppm: the tests rasterise the licence PDF to scan its QR
# Debian's own python3 needs python3-venv for `python3 -m venv` (a pyenv Python has it built in).
python3 -c 'import ensurepip, venv' 2>/dev/null || APT_PACKAGES+=(python3-venv)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}"
fi

# rustup puts cargo in ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
# Python dependencies (maturin, then the `dev` extra) again whenever pyproject.toml changes.
stamp="$VENV/.deps-stamp"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python build and test tools into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "maturin>=1.9.4,<2.0"
  touch "$stamp.pending"
fi

# Build the Rust extension in release mode into the venv (cargo rebuilds only what changed), and
# install the project itself (the `fleet` command) in editable form.
echo "setup: building rust_core (release) into $VENV"
extras=()
[ -f "$stamp.pending" ] && extras=(-E dev,agent,server)
VIRTUAL_ENV="$PWD/$VENV" PATH="$PWD/$VENV/bin:$PATH" \
  "$VENV/bin/maturin" develop --release --locked -q "${extras[@]}"
if [ -f "$stamp.pending" ]; then mv "$stamp.pending" "$stamp"; fi
echo "setup: ready ($VENV/bin/fleet)"
