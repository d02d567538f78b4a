"""Bulk sign/verify run without the GIL: Python threads (other requests, a UI) keep running.

The check: while one thread is inside verify_many / sign_many, the main thread keeps looping. If the
GIL were held for the whole call, the main thread would see one gap as long as the call itself.
"""

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import rust_core

LIC = {
    1: "91350100M000100Y43",
    2: "成都市武侯区某某小吃店",
    3: "个体工商户",
    4: "张三",
    5: "四川省成都市武侯区人民南路四段1号",
    7: "2024-03-01",
    9: "T-0001",
}


def claims(n: int) -> list[dict[str, Any]]:
    now = int(time.time())
    return [{"iss": "CN-510107", "iat": now, "cti": os.urandom(16), "lic": LIC} for _ in range(n)]


def longest_gap_during(call: Callable[[], object]) -> tuple[float, float]:
    """Run `call` in a thread; return (its duration, the main thread's longest pause meanwhile).

    The main thread is already looping when the call starts, so a call that held the GIL would
    show up as a pause as long as the call.
    """
    go, done = threading.Event(), threading.Event()
    duration = 0.0

    def worker() -> None:
        nonlocal duration
        go.wait()
        t0 = time.perf_counter()
        call()
        duration = time.perf_counter() - t0
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    longest, last = 0.0, time.perf_counter()
    go.set()
    while not done.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    thread.join()
    return duration, longest


def test_the_probe_sees_a_call_that_holds_the_gil() -> None:
    """The measuring stick itself: sorting a big list in C keeps the GIL throughout."""
    data = [os.urandom(8) for _ in range(600_000)]
    duration, gap = longest_gap_during(lambda: sorted(data))
    assert duration > 0.1
    assert gap > duration / 2


@pytest.fixture(scope="module")
def key() -> rust_core.SigningKey:
    # SM2: the slowest algorithm, so a modest batch runs long enough to measure.
    return rust_core.SigningKey.generate("SM2")


def test_verify_many_releases_the_gil(key: rust_core.SigningKey) -> None:
    texts = key.sign_many(claims(2000))
    store = rust_core.TrustStore.from_keys([key])
    results: list[rust_core.Verification] = []
    duration, gap = longest_gap_during(lambda: results.extend(store.verify_many(texts * 4)))
    assert all(results) and len(results) == 8000
    assert duration > 0.2, "the batch is too small to tell"
    assert gap < duration / 2, f"main thread stalled {gap:.3f}s of a {duration:.3f}s call"


def test_sign_many_releases_the_gil(key: rust_core.SigningKey) -> None:
    batch = claims(4000)
    texts: list[str] = []
    duration, gap = longest_gap_during(lambda: texts.extend(key.sign_many(batch)))
    assert len(texts) == 4000 and len(set(texts)) == 4000
    assert duration > 0.2, "the batch is too small to tell"
    assert gap < duration / 2, f"main thread stalled {gap:.3f}s of a {duration:.3f}s call"


def test_stores_are_shared_safely_between_threads(key: rust_core.SigningKey) -> None:
    """Many Python threads verifying through one store at once get the same verdicts."""
    good = key.sign_many(claims(200))
    bad = [t[:-4] + ("0000" if not t.endswith("0000") else "1111") for t in good]
    store = rust_core.TrustStore.from_keys([key])
    expected = [store.verify(t).verdict for t in good + bad]
    outcomes: list[list[str]] = []

    def run() -> None:
        outcomes.append([v.verdict for v in store.verify_many(good + bad)])

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [expected] * 4
    assert expected.count("valid") == 200
