"""`fleet demo`: the licence seal end to end, told in plain words (the product's run command).

Makes an issuing key and the trust list an auditor carries, issues a licence for a sole
proprietorship (个体工商户) as a kiosk would print it, and checks the genuine printout and
several bad ones the way `fleet verify` does. The files stay in the folder for trying
`fleet verify` by hand.
"""

from __future__ import annotations

import argparse
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rust_core
from fleet.cli_common import CliError, write_atomic

ISSUER = "CN-510107"  # 成都市武侯区 (Wuhou District, Chengdu): the licence-issuing bureau
YEAR = 365 * 24 * 3600
NAME = "成都市武侯区蓉香小吃店"
FORGED_NAME = "成都市武侯区蓉香火锅店"  # same length in UTF-8: a forger patching bytes in place


@dataclass(frozen=True)
class _Check:
    what: str
    text: str
    expected: str
    at: int | None = None
    revoked: bool = False


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="show the licence seal end to end (issue, verify, tamper, revoke)",
        description="Issue a sample licence and check it the way an auditor would: genuine, "
        "tampered, damaged, unknown issuer, expired, revoked. Writes its files (key, trust "
        "list, licence, revocation list) into DIR, replacing earlier demo files there.",
    )
    p.add_argument("--dir", default=".demo", help="folder for the demo files (default: .demo)")
    p.set_defaults(func=run)


def sample_uscc() -> str:
    """A unified social credit code (GB 32100-2015) for a 个体工商户 registered in 武侯区:
    9 = registered by market regulation, 2 = 个体工商户, 510107 = the district, then the
    9-character organisation code, then the check character rust_core computes."""
    first17 = "9" + "2" + "510107" + "MA6CQ8T15"
    return first17 + rust_core.uscc_check_char(first17)


def sample_claims(now: int, serial: bytes) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "iat": now,
        "exp": now + YEAR,
        "cti": serial,
        "lic": {
            1: sample_uscc(),
            2: NAME,
            3: "个体工商户",
            4: "王秀英",
            5: "四川省成都市武侯区玉林北路12号附3号",
            7: "2024-03-18",
            8: "小吃服务；饮料及冷饮服务",
            9: "WH-HALL-07",
        },
    }


def forge_name(text: str, old: str, new: str) -> str:
    """What a forger without the key can do: unpack the QR text, change the name, repack."""
    cose = zlib.decompress(rust_core.base45_decode(text.removeprefix("LIC1:")))
    old_b, new_b = old.encode(), new.encode()
    if len(old_b) != len(new_b) or cose.count(old_b) != 1:
        raise ValueError("the name must occur once and keep its length")
    return "LIC1:" + rust_core.base45_encode(zlib.compress(cose.replace(old_b, new_b), 9))


def smudge(text: str) -> str:
    """One character misread in the middle, as from a scratched or badly printed QR code."""
    i = len(text) // 2
    return text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]


def run(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create folder {args.dir!r}: {e.strerror}") from None
    now = int(time.time())
    shown = _shown_path(folder)

    print(f"fleet demo: the licence seal, end to end (files in {shown('')})\n")

    key = rust_core.SigningKey.generate("EdDSA")
    write_atomic(folder / "issuer-key.pem", key.to_pem().encode(), private=True, overwrite=True)
    write_atomic(folder / "issuer-pub.pem", key.public_pem().encode(), overwrite=True)
    print(f"1. The district bureau {ISSUER} made an EdDSA issuing key, kid {key.kid.hex()}.")
    print(f"   private key {shown('issuer-key.pem')} (mode 0600), public {shown('issuer-pub.pem')}")

    trust = rust_core.trust_list_json([key], ISSUER)
    write_atomic(folder / "trust.json", trust.encode(), overwrite=True)
    store = rust_core.TrustStore.from_json(trust)
    print(f"2. It published the trust list auditors carry offline: {shown('trust.json')}")

    serial = os.urandom(16)
    claims = sample_claims(now, serial)
    text = key.sign_licence(claims)
    write_atomic(folder / "licence.txt", (text + "\n").encode(), overwrite=True)
    lic = claims["lic"]
    print(f"3. Kiosk {lic[9]} printed the business licence of {lic[2]} ({lic[3]},")
    print(f"   unified social credit code {lic[1]}, operator {lic[4]}), serial {serial.hex()}.")
    print(f"   Its QR code holds {len(text)} characters: {shown('licence.txt')}")
    print(f"   {text[:60]}…")

    outsider = rust_core.SigningKey.generate("ES256")
    revoked = rust_core.revocation_list_json([serial])
    write_atomic(folder / "revoked.json", revoked.encode(), overwrite=True)
    revoked_store = rust_core.TrustStore.from_json(trust, revoked)
    checks = [
        _Check("the genuine printout", text, "valid"),
        _Check(
            f"the name changed to {FORGED_NAME} by a forger",
            forge_name(text, NAME, FORGED_NAME),
            "bad_signature",
        ),
        _Check("one character misread from a damaged print", smudge(text), "malformed"),
        _Check(
            "the same licence signed with a key not on the trust list",
            outsider.sign_licence(claims),
            "unknown_kid",
        ),
        _Check("the genuine printout, checked two years later", text, "expired", at=now + 2 * YEAR),
        _Check("the genuine printout, after the bureau revoked it", text, "revoked", revoked=True),
    ]
    print("4. An auditor scans these with `fleet verify` and gets:")
    surprises = 0
    for c in checks:
        v = (revoked_store if c.revoked else store).verify(c.text, c.at)
        mark = "" if v.verdict == c.expected else f"   <-- unexpected: should be {c.expected}"
        surprises += v.verdict != c.expected
        print(f"   {v.verdict:<14} {c.what}{mark}")
    print(f"   (the revocation list is {shown('revoked.json')})")

    print("\nTry it yourself:")
    print(f"   fleet verify --trust {shown('trust.json')} {shown('licence.txt')}")
    print(
        f"   fleet verify --trust {shown('trust.json')} --revoked {shown('revoked.json')} --json "
        f"{shown('licence.txt')}"
    )
    if surprises:
        print(f"\nfleet demo: {surprises} check(s) did not give the expected verdict")
        return 1
    return 0


def _shown_path(folder: Path) -> Callable[[str], str]:
    """Paths as the user would type them: relative to the current folder when inside it."""
    try:
        base = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        base = folder.resolve()

    def shown(name: str) -> str:
        return str(base / name) if name else str(base) + os.sep

    return shown
