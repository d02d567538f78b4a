#!/usr/bin/env bash
# Run every cargo-fuzz target of rust_core for FUZZ_SECONDS each (default 60).
# cargo fuzz needs nightly-only flags; RUSTC_BOOTSTRAP lets the one stable toolchain here take them.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
if [ ! -f rust_core/fuzz/Cargo.toml ]; then
  echo "fuzz: no fuzz targets yet (rust_core/fuzz/Cargo.toml)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
# Seed corpora: valid LIC1 texts signed with the fuzz key, so the fuzzer starts past the parsers.
.venv/bin/python rust_core/fuzz/seeds.py
cd rust_core
targets=$(cargo fuzz list)
[ -n "$targets" ] || { echo "fuzz: cargo fuzz list found no targets" >&2; exit 1; }
for t in $targets; do
  echo "fuzz: $t for ${FUZZ_SECONDS}s"
  # max_len above the 4,296-character QR limit; a 5 s timeout would flag any hang.
  cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$FUZZ_SECONDS" -max_len=6000 -timeout=5 \
    -rss_limit_mb=2048
done
