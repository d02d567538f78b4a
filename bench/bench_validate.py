"""Micro-benchmark: µs per `validate.parse` call on realistic status payloads.

.venv/bin/python bench/bench_validate.py [--n 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_ingest import status_payload

from fleet.server.ingest.validate import Status, parse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    msgs = [(f"fleet/v1/t/T-{i % 200:04d}/status", status_payload(i)) for i in range(a.n)]
    assert all(isinstance(parse(t, p), Status) for t, p in msgs[:100])
    best = float("inf")
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        for t, p in msgs:
            parse(t, p)
        best = min(best, time.perf_counter() - t0)
    print(f"validate.parse: {best / a.n * 1e6:.2f} µs/msg (best of {a.repeat}, {a.n} msgs)")


if __name__ == "__main__":
    main()
