"""Licence-seal benchmark: rust_core against the pure-Python stack, pycose and the bare signatures.

    .venv/bin/python bench/bench_seal.py            # full run (2,000 licences per algorithm)
    .venv/bin/python bench/bench_seal.py --quick    # short run while developing
    .venv/bin/python bench/bench_seal.py --n 5000 --repeats 7 --json bench/results/seal.json
    .venv/bin/python bench/bench_seal.py --alg QR   # only the QR section

Everything runs in one process, side by side, on the same distinct, valid licences. Each figure is
the median over several repeats (the machine is small and shared). Ratios are against the
pure-Python stack (tests/lic1_reference.py: cbor2 + cryptography/gmssl + zlib + base45) running
single-threaded, the same pipeline rust_core runs. Every verification is checked to be "valid"
and every signed output is checked to verify, so no row measures garbage.

The QR section draws the QR code of licence-sized LIC1 texts (alphanumeric mode, level Q, module
4 px, quiet zone 4) with rust_core and with segno (SVG and PNG written to a BytesIO), and times bulk
issuance (sign + SVG + PNG): rust_core's issue_many against sign_licence + segno, one at a time.
The first and last code drawn in each batch are decoded with zxing-cpp.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import io
import json
import os
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import base45
import cbor2
import segno
import zxingcpp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from PIL import Image
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm
from pycose.keys.cosekey import CoseKey
from pycose.messages.sign1message import Sign1Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import lic1_reference as ref  # lives with the tests, shared with them

import rust_core

ALGS = ("EdDSA", "ES256", "SM2")
QR = "QR"  # the QR section, filed like an algorithm (`--alg QR` runs only it)
QR_MODULE_PX = 4
QR_BORDER = 4
# Row keys, in print order, with their labels (the SM2 labels name gmssl instead).
ROWS = ("rust_one", "rust_many", "python", "pycose", "raw")
PYCOSE_ALGS = {"EdDSA": EdDSA, "ES256": Es256}


@dataclass(frozen=True)
class Target:
    """A goal from the issue: `row` must reach `factor` × the `baseline` row's throughput."""

    label: str
    alg: str
    op: str
    row: str
    factor: float
    baseline: str = "python"


TARGETS = (
    Target(
        "Ed25519 verify_many ≥ 6× Python stack single-thread", "EdDSA", "verify", "rust_many", 6
    ),
    Target("Ed25519 one-at-a-time verify ≥ 1.5× Python stack", "EdDSA", "verify", "rust_one", 1.5),
    Target(
        "ES256 verify_many ≥ 2.5× Python stack single-thread", "ES256", "verify", "rust_many", 2.5
    ),
    # "SM2 ≥ 50× gmssl": against gmssl's verify_with_sm3 alone (a little faster than the whole
    # gmssl-based stack); shown for verify_many and, stricter, for one at a time.
    Target("SM2 verify_many ≥ 50× gmssl verify_with_sm3", "SM2", "verify", "rust_many", 50, "raw"),
    Target(
        "SM2 one-at-a-time verify ≥ 50× gmssl (stricter)", "SM2", "verify", "rust_one", 50, "raw"
    ),
    # "rust_core renders the QR (SVG and PNG) ≥ 10× faster than segno", licence-sized text.
    Target("QR code as SVG ≥ 10× segno", QR, "svg", "rust", 10, "segno"),
    Target("QR code as PNG ≥ 10× segno", QR, "png", "rust", 10, "segno"),
)

NOTES = (
    "× stack: throughput over the pure-Python stack's (single thread), same operation and alg.",
    "pycose 1.1.0's Sign1Message.decode refuses every message under cbor2 >= 6 (tuple/frozendict);"
    " it is measured through Sign1Message.from_cose_obj, decode's own next step.",
    "signature alone: ES256's r||s is converted to DER for cryptography before timing; signing"
    " output stays DER. SM2 signing draws its nonce from `secrets` (gmssl's own uses `random`).",
    "QR: segno.make(text, error='q', mode='alphanumeric', micro=False, boost_error=False), saved"
    " with scale=4, border=4 to a BytesIO; rust_core.qr_svg / qr_png(text, 4). Each call encodes"
    " (mask choice included) and draws; 'SVG + PNG' makes one segno code and saves it twice.",
)


@dataclass
class Measurement:
    n: int
    runs_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    @property
    def ops_per_s(self) -> float:
        return self.n / self.median_s


@dataclass
class AlgResult:
    alg: str
    rows: dict[str, dict[str, Measurement]] = field(default_factory=dict)  # op -> row -> m
    skipped: dict[str, str] = field(default_factory=dict)  # row -> why
    info: dict[str, Any] = field(default_factory=dict)  # what else describes the workload

    def ratio(self, op: str, row: str, baseline: str = "python") -> float | None:
        table = self.rows.get(op, {})
        if row not in table or baseline not in table:
            return None
        return table[row].ops_per_s / table[baseline].ops_per_s


def measure(
    run: Callable[[], Any], check: Callable[[Any], None], n: int, repeats: int
) -> Measurement:
    """Time `run` (one whole batch of n operations) `repeats` times; `check` its output each
    time, outside the timed part. One untimed warm-up run first."""
    check(run())
    runs = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        out = run()
        runs.append(time.perf_counter() - start)
        check(out)
    return Measurement(n, runs)


# --- the workload: one key, N distinct licences --------------------------------------------


@dataclass
class Workload:
    alg: str
    rust_key: Any
    ref_key: ref.RefKey
    store: Any
    ref_store: ref.RefTrustStore
    claims: list[dict[str, Any]]
    texts: list[str]
    at: int
    slow_n: int  # how many the slow Python-only paths use (gmssl)

    @property
    def py_n(self) -> int:
        return self.slow_n if self.alg == "SM2" else len(self.texts)


def make_workload(alg: str, n: int, slow_n: int) -> Workload:
    rust_key = rust_core.SigningKey.generate(alg)
    ref_key = ref.signing_key_from_pem(rust_key.to_pem())
    at = int(time.time())
    claims = [
        ref.make_claims(iat=at - 60, exp=at + 86_400 * 365, term=f"T-{i:04d}") for i in range(n)
    ]
    texts = rust_key.sign_many(claims)
    ensure(len(set(texts)) == n, "licences must be distinct")
    trust = ref.trust_list_json([(alg, rust_key.public_spki())])
    store = rust_core.TrustStore.from_json(trust)
    ref_store = ref.RefTrustStore.from_json(trust)
    work = Workload(alg, rust_key, ref_key, store, ref_store, claims, texts, at, slow_n)
    all_valid(store.verify_many(texts, at=at))
    all_valid([ref_store.verify(t, at) for t in texts[: work.py_n]])
    return work


def ensure(condition: bool, message: str) -> None:
    """Stop the benchmark: it would otherwise time something other than what it claims."""
    if not condition:
        raise SystemExit(f"bench_seal: {message}")


def all_valid(results: Sequence[Any]) -> None:
    bad = [r for r in results if r.verdict != "valid"]
    if bad:
        ensure(False, f"{len(bad)} of {len(results)} not valid, e.g. {bad[0].verdict}")


def all_true(results: Sequence[Any]) -> None:
    ensure(all(r is True for r in results), "a verification failed")


# --- pycose: the text pipeline (Base45 + zlib + CBOR) around Sign1Message --------------------


def pycose_keys(work: Workload) -> tuple[Any, Any]:
    private = CoseKey.from_pem_private_key(work.rust_key.to_pem())
    public = CoseKey.from_pem_public_key(work.rust_key.public_pem())
    return private, public


def pycose_decode(cose: bytes) -> Sign1Message:
    """Sign1Message.decode without its tag dispatch: pycose 1.1.0 expects the tag's content as a
    list and the unprotected header as a dict, while cbor2 >= 6 hands back a tuple and a
    frozendict, so Sign1Message.decode refuses every message. This is decode's own next step."""
    item = cbor2.loads(cose)
    if not isinstance(item, cbor2.CBORTag) or item.tag != 18:
        raise ValueError("not a tagged COSE_Sign1")
    protected, unprotected, payload, signature = item.value
    return Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)


def pycose_verify(text: str, key: Any, at: int) -> bool:
    cose = zlib.decompress(base45.b45decode(text.removeprefix(ref.PREFIX)))
    msg = pycose_decode(cose)
    msg.key = key
    if msg.payload is None or not msg.verify_signature():
        return False
    claims = cbor2.loads(msg.payload)
    return bool(claims.get(ref.CLAIM_EXP, at + 1) > at)


def pycose_sign(claims: dict[str, Any], key: Any, alg: str, kid: bytes) -> str:
    msg = Sign1Message(
        phdr={Algorithm: PYCOSE_ALGS[alg], KID: kid}, payload=ref.encode_claims(claims), key=key
    )
    return ref.PREFIX + ref.b45encode(zlib.compress(msg.encode(), 9))


# --- the signature alone: cryptography or gmssl on the same Sig_structure bytes --------------


def signing_inputs(work: Workload, count: int) -> list[tuple[bytes, bytes, bytes]]:
    """(protected, Sig_structure, raw signature) for the first `count` texts."""
    out = []
    for text in work.texts[:count]:
        sign1, _ = ref.decode_text(text)
        out.append(
            (sign1.protected, ref.sig_structure(sign1.protected, sign1.payload), sign1.signature)
        )
    return out


def raw_verify_run(work: Workload) -> Callable[[], list[bool]]:
    """A batch of bare signature checks on the same Sig_structure bytes (inputs prepared first:
    ES256's r||s is turned into the DER that `cryptography` wants before timing)."""
    inputs = signing_inputs(work, work.py_n)
    if work.alg == "SM2":
        ensure(isinstance(work.ref_key, ref.Sm2Key), "not an SM2 key")
        gm = ref.Sm2Key(work.ref_key.public_xy).gmssl  # type: ignore[attr-defined]
        hex_pairs = [(sig.hex(), msg) for _, msg, sig in inputs]
        return lambda: [bool(gm.verify_with_sm3(sig, msg)) for sig, msg in hex_pairs]
    public: Any = serialization.load_der_public_key(work.rust_key.public_spki())
    if work.alg == "EdDSA":
        pairs = [(sig, msg) for _, msg, sig in inputs]

        def run_ed25519() -> list[bool]:
            for sig, msg in pairs:
                public.verify(sig, msg)  # raises InvalidSignature on a bad one
            return [True] * len(pairs)

        return run_ed25519
    ecdsa = ec.ECDSA(hashes.SHA256())
    der_pairs = [(der_signature(sig), msg) for _, msg, sig in inputs]

    def run_p256() -> list[bool]:
        for sig, msg in der_pairs:
            public.verify(sig, msg, ecdsa)
        return [True] * len(der_pairs)

    return run_p256


def der_signature(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))


def raw_signature(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_signer(work: Workload) -> Callable[[bytes], bytes]:
    """Sign Sig_structure bytes with the library alone (ES256 output left as DER)."""
    if work.alg == "SM2":
        return work.ref_key.sign  # gmssl sign_with_sm3, with a nonce from `secrets`
    private = serialization.load_pem_private_key(work.rust_key.to_pem().encode(), None)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise SystemExit("bench_seal: not a P-256 key")
    p256, ecdsa = private, ec.ECDSA(hashes.SHA256())
    return lambda msg: p256.sign(msg, ecdsa)


# --- the measurements ------------------------------------------------------------------------


def bench_verify(work: Workload, repeats: int) -> dict[str, Measurement]:
    store, texts, at, py_n = work.store, work.texts, work.at, work.py_n
    rows = {
        "rust_one": measure(
            lambda: [store.verify(t, at=at) for t in texts], all_valid, len(texts), repeats
        ),
        "rust_many": measure(
            lambda: store.verify_many(texts, at=at), all_valid, len(texts), repeats
        ),
        "python": measure(
            lambda: [work.ref_store.verify(t, at) for t in texts[:py_n]], all_valid, py_n, repeats
        ),
    }
    if work.alg in PYCOSE_ALGS:
        _, public = pycose_keys(work)
        rows["pycose"] = measure(
            lambda: [pycose_verify(t, public, at) for t in texts], all_true, len(texts), repeats
        )
    rows["raw"] = measure(raw_verify_run(work), all_true, py_n, repeats)
    return rows


def texts_verify(work: Workload) -> Callable[[Sequence[str]], None]:
    def check(texts: Sequence[str]) -> None:
        ensure(len(set(texts)) == len(texts), "signed texts must be distinct")
        all_valid(work.store.verify_many(list(texts), at=work.at))

    return check


def raw_signatures_verify(
    work: Workload, inputs: list[tuple[bytes, bytes, bytes]]
) -> Callable[[Sequence[bytes]], None]:
    """Check raw signatures by wrapping them back into COSE and asking rust_core."""
    public = work.rust_key.verifying_key()

    payloads = [ref.decode_text(text)[0].payload for text in work.texts[: len(inputs)]]

    def check(sigs: Sequence[bytes]) -> None:
        ensure(len(sigs) == len(inputs), "a signature is missing")
        for (protected, _, _), payload, sig in zip(inputs, payloads, sigs, strict=True):
            cose_sig = raw_signature(sig) if work.alg == "ES256" else sig
            cose = ref.cose_sign1(protected, {}, payload, cose_sig)
            verdict = rust_core.verify_cose_sign1(cose, public)
            ensure(verdict == "valid", f"a bare signature does not verify: {verdict}")

    return check


def bench_sign(work: Workload, repeats: int) -> dict[str, Measurement]:
    key, claims, py_n = work.rust_key, work.claims, work.py_n
    check = texts_verify(work)
    rows = {
        "rust_one": measure(
            lambda: [key.sign_licence(c) for c in claims], check, len(claims), repeats
        ),
        "rust_many": measure(lambda: key.sign_many(claims), check, len(claims), repeats),
        "python": measure(
            lambda: [ref.sign_licence(work.ref_key, c) for c in claims[:py_n]], check, py_n, repeats
        ),
    }
    if work.alg in PYCOSE_ALGS:
        private, _ = pycose_keys(work)
        kid = key.kid
        rows["pycose"] = measure(
            lambda: [pycose_sign(c, private, work.alg, kid) for c in claims],
            check,
            len(claims),
            repeats,
        )
    sign = raw_signer(work)
    inputs = signing_inputs(work, py_n)
    rows["raw"] = measure(
        lambda: [sign(msg) for _, msg, _ in inputs],
        raw_signatures_verify(work, inputs),
        py_n,
        repeats,
    )
    return rows


def run_alg(alg: str, n: int, slow_n: int, repeats: int) -> AlgResult:
    work = make_workload(alg, n, slow_n)
    result = AlgResult(alg)
    result.rows["verify"] = bench_verify(work, repeats)
    result.rows["sign"] = bench_sign(work, repeats)
    if alg not in PYCOSE_ALGS:
        result.skipped["pycose"] = "pycose has no SM2 (no COSE algorithm id for SM2/SM3)"
    return result


# --- QR codes: rust_core against segno ------------------------------------------------------


def segno_code(text: str) -> Any:
    return segno.make(text, error="q", mode="alphanumeric", micro=False, boost_error=False)


def segno_save(code: Any, kind: str) -> bytes:
    out = io.BytesIO()
    code.save(out, kind=kind, scale=QR_MODULE_PX, border=QR_BORDER)
    return out.getvalue()


def segno_svg(text: str) -> bytes:
    return segno_save(segno_code(text), "svg")


def segno_png(text: str) -> bytes:
    return segno_save(segno_code(text), "png")


def segno_both(text: str) -> tuple[bytes, bytes]:
    code = segno_code(text)
    return segno_save(code, "svg"), segno_save(code, "png")


def rust_both(text: str) -> tuple[str, bytes]:
    return rust_core.qr_svg(text, QR_MODULE_PX), rust_core.qr_png(text, QR_MODULE_PX)


def segno_issue(key: Any, claims: dict[str, Any]) -> tuple[str, bytes, bytes]:
    text = key.sign_licence(claims)
    return (text, *segno_both(text))


def rust_issue_one(key: Any, claims: dict[str, Any]) -> tuple[str, str, bytes]:
    text = key.sign_licence(claims)
    return (text, *rust_both(text))


def decodes_to(png: bytes, text: str) -> None:
    found = zxingcpp.read_barcodes(
        Image.open(io.BytesIO(png)), formats=zxingcpp.BarcodeFormat.QRCode
    )
    ensure([f.text for f in found] == [text], "a drawn QR code does not decode to its text")


def qr_checker(texts: Sequence[str], kind: str) -> Callable[[Sequence[Any]], None]:
    """Outputs of one batch: as many as texts; SVGs look like SVG; PNG (or the PNG of a pair)
    of the first and last text decode to it."""

    def check(outputs: Sequence[Any]) -> None:
        ensure(len(outputs) == len(texts), "a QR code is missing")
        for i in (0, len(texts) - 1):
            out = outputs[i]
            if kind == "svg":
                head = out[:200].decode() if isinstance(out, bytes) else out[:200]
                ensure("<svg" in head, "not an SVG")
            else:
                decodes_to(out[1] if kind == "both" else out, texts[i])

    return check


def issued_checker(store: Any, at: int, n: int) -> Callable[[Sequence[Any]], None]:
    def check(issued: Sequence[Any]) -> None:
        texts = [t for t, _, _ in issued]
        ensure(len(texts) == n and len(set(texts)) == n, "issued licences must be distinct")
        all_valid(store.verify_many(texts, at=at))
        for i in (0, n - 1):
            decodes_to(issued[i][2], texts[i])

    return check


def run_qr(n: int, qr_n: int, slow_n: int, repeats: int) -> AlgResult:
    key = rust_core.SigningKey.generate("EdDSA")
    store = rust_core.TrustStore.from_keys([key])
    at = int(time.time())
    claims = [
        ref.make_claims(iat=at - 60, exp=at + 86_400 * 365, term=f"T-{i:04d}") for i in range(n)
    ]
    texts = key.sign_many(claims[:qr_n])
    result = AlgResult(QR)
    for op, rust_fn, segno_fn in (
        ("svg", lambda t: rust_core.qr_svg(t, QR_MODULE_PX), segno_svg),
        ("png", lambda t: rust_core.qr_png(t, QR_MODULE_PX), segno_png),
        ("both", rust_both, segno_both),
    ):
        check = qr_checker(texts, op)
        result.rows[op] = {
            "rust": measure(lambda f=rust_fn: [f(t) for t in texts], check, qr_n, repeats),
            "segno": measure(lambda f=segno_fn: [f(t) for t in texts], check, qr_n, repeats),
        }
    result.rows["issue"] = {
        "rust_many": measure(
            lambda: key.issue_many(claims, QR_MODULE_PX), issued_checker(store, at, n), n, repeats
        ),
        "rust_one": measure(
            lambda: [rust_issue_one(key, c) for c in claims],
            issued_checker(store, at, n),
            n,
            repeats,
        ),
        "segno": measure(
            lambda: [segno_issue(key, c) for c in claims[:slow_n]],
            issued_checker(store, at, slow_n),
            slow_n,
            repeats,
        ),
    }
    result.info = {
        "text_chars": statistics.median(len(t) for t in texts),
        "versions": sorted({(len(rust_core.qr_matrix(t)) - 17) // 4 for t in texts}),
    }
    return result


QR_ROWS = (
    ("svg", "rust", "rust_core.qr_svg"),
    ("svg", "segno", "segno make + SVG"),
    ("png", "rust", "rust_core.qr_png"),
    ("png", "segno", "segno make + PNG"),
    ("both", "rust", "rust_core.qr_svg + qr_png"),
    ("both", "segno", "segno make + SVG + PNG"),
    ("issue", "rust_many", "rust_core issue_many ({cores} cores)"),
    ("issue", "rust_one", "sign_licence + qr_svg + qr_png, one at a time"),
    ("issue", "segno", "sign_licence + segno SVG + PNG, one at a time"),
)


def qr_label(op: str, row: str) -> str:
    label = next(lbl for o, r, lbl in QR_ROWS if (o, r) == (op, row))
    return label.format(cores=os.cpu_count() or 1).replace("segno", f"segno {version('segno')}", 1)


def print_qr(result: AlgResult) -> None:
    info = result.info
    print(
        f"\nQR codes: LIC1 texts of ~{info['text_chars']:.0f} characters (version "
        f"{', '.join(map(str, info['versions']))}-Q), module {QR_MODULE_PX} px, quiet zone "
        f"{QR_BORDER}"
    )
    print(f"{'implementation':52} {'n':>5} {'ops/s':>11} {'per op':>10} {'× segno':>8}")
    for op, row, _ in QR_ROWS:
        if op == "issue" and row == "rust_many":
            print(f"bulk issuance (sign + SVG + PNG){'':20} {'':>5} {'licences/s':>11}")
        m = result.rows[op][row]
        ratio = result.ratio(op, row, "segno")
        ratio_text = f"{ratio:7.1f}×" if ratio is not None and row != "segno" else ""
        per_op = f"{m.median_s / m.n * 1e3:8.3f}ms"
        print(f"{qr_label(op, row):52} {m.n:>5} {m.ops_per_s:11,.1f} {per_op:>10} {ratio_text:>8}")


# --- report ------------------------------------------------------------------------------------


def row_label(row: str, alg: str) -> str:
    lib = "gmssl" if alg == "SM2" else "cryptography"
    cores = os.cpu_count() or 1
    return {
        "rust_one": "rust_core, one at a time",
        "rust_many": f"rust_core verify_many/sign_many ({cores} cores)",
        "python": f"Python stack (cbor2+{lib}+zlib+base45)",
        "pycose": f"pycose {version('pycose')} (+cbor2+zlib+base45)",
        "raw": f"signature alone: {lib}",
    }[row]


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def format_cell(m: Measurement | None, ratio: float | None) -> str:
    if m is None:
        return f"{'—':>11} {'':>8}"
    ratio_text = f"{ratio:7.2f}×" if ratio is not None else ""
    return f"{m.ops_per_s:11,.0f} {ratio_text:>8}"


def print_alg(result: AlgResult) -> None:
    verify, sign = result.rows["verify"], result.rows["sign"]
    print(f"\n{result.alg}")
    print(f"{'':50} {'verify':>20}   {'sign':>20}")
    heading = f"{'ops/s':>11} {'× stack':>8}"
    print(f"{'implementation':44} {'n':>5} {heading}   {heading}")
    for row in ROWS:
        if row in result.skipped:
            print(f"{row_label(row, result.alg):44}  skipped: {result.skipped[row]}")
            continue
        n = verify[row].n
        print(
            f"{row_label(row, result.alg):44} {n:>5} "
            f"{format_cell(verify.get(row), result.ratio('verify', row))}   "
            f"{format_cell(sign.get(row), result.ratio('sign', row))}"
        )


def evaluate_targets(results: dict[str, AlgResult]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        result = results.get(t.alg)
        ratio = result.ratio(t.op, t.row, t.baseline) if result else None
        met = None if ratio is None else ratio >= t.factor  # None: that algorithm was not run
        out.append({**asdict(t), "measured": ratio, "met": met})
    return out


def print_targets(targets: list[dict[str, Any]]) -> None:
    print()
    for note in NOTES:
        print(f"note: {note}")
    print(f"\n{'target (from the issue)':62} {'measured':>9} {'met':>5}")
    for t in targets:
        measured = f"{t['measured']:8.1f}×" if t["measured"] is not None else "      n/a"
        met = {True: "yes", False: "NO", None: "—"}[t["met"]]
        print(f"{t['label']:62} {measured:>9} {met:>5}")


def alg_json(result: AlgResult) -> dict[str, Any]:
    out: dict[str, Any] = {"skipped": result.skipped}
    if result.info:
        out["info"] = result.info
    for op, table in result.rows.items():
        out[op] = {
            row: {
                "label": qr_label(op, row) if result.alg == QR else row_label(row, result.alg),
                "n": m.n,
                "median_s": m.median_s,
                "ops_per_s": m.ops_per_s,
                **(
                    {"ratio_vs_segno": result.ratio(op, row, "segno")}
                    if result.alg == QR
                    else {"ratio_vs_python_stack": result.ratio(op, row)}
                ),
                "runs_s": m.runs_s,
            }
            for row, m in table.items()
        }
    return out


def to_json(
    results: dict[str, AlgResult], targets: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    libs = ("cryptography", "cbor2", "base45", "pycose", "gmssl", "segno", "zxing-cpp")
    meta = {
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "n": args.n,
        "slow_n": args.slow_n,
        "qr_n": args.qr_n,
        "repeats": args.repeats,
        "quick": args.quick,
        "versions": {lib: version(lib) for lib in libs},
        "unix_time": int(time.time()),
    }
    return {
        "meta": meta,
        "results": {alg: alg_json(r) for alg, r in results.items()},
        "targets": targets,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: 300 licences, 3 repeats")
    parser.add_argument("--n", type=int, help="licences per algorithm (default 2000; quick 300)")
    parser.add_argument(
        "--slow-n",
        type=int,
        help="licences for the gmssl and sign + segno paths (default 50; quick 10)",
    )
    parser.add_argument(
        "--qr-n", type=int, help="distinct texts for the QR drawing rows (default 20; quick 5)"
    )
    parser.add_argument(
        "--repeats", type=int, help="timed repeats, median reported (default 5; quick 3)"
    )
    parser.add_argument(
        "--alg", action="append", choices=(*ALGS, QR), help="only these algorithms (QR: QR codes)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    args.n = args.n or (300 if args.quick else 2000)
    args.slow_n = min(args.slow_n or (10 if args.quick else 50), args.n)
    args.qr_n = args.qr_n or (5 if args.quick else 20)
    args.repeats = args.repeats or (3 if args.quick else 5)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"LIC1 seal benchmark: os.cpu_count()={os.cpu_count()}, median of {args.repeats} repeats, "
        f"{args.n} distinct licences per algorithm ({args.slow_n} for the gmssl paths), "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start"
    )
    results = {}
    for alg in args.alg or (*ALGS, QR):
        if alg == QR:
            results[alg] = run_qr(args.n, args.qr_n, args.slow_n, args.repeats)
            print_qr(results[alg])
            continue
        results[alg] = run_alg(alg, args.n, args.slow_n, args.repeats)
        print_alg(results[alg])
    targets = evaluate_targets(results)
    print_targets(targets)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(results, targets, args), indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
