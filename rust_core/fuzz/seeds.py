"""Write seed corpora for the fuzz targets: valid LIC1 texts signed with the fuzz key.

Run with the project venv (rust_core built): python rust_core/fuzz/seeds.py
"""

import os
import sys
import zlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import rust_core

HERE = Path(__file__).resolve().parent
FUZZ_SEED = bytes([7] * 32)  # the same fixed seed as fuzz_targets/common.rs


def main() -> int:
    pem = (
        Ed25519PrivateKey.from_private_bytes(FUZZ_SEED)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    keys = [rust_core.SigningKey.from_pem(pem)] + [
        rust_core.SigningKey.generate(a) for a in ("ES256", "SM2")
    ]
    lic = {
        1: "91350100M000100Y43",
        2: "某某小吃店",
        3: "个体工商户",
        4: "张三",
        5: "成都市武侯区",
        7: "2024-03-01",
        9: "T-0001",
    }
    text_dir, cose_dir = HERE / "corpus" / "verify_text", HERE / "corpus" / "verify_cose"
    text_dir.mkdir(parents=True, exist_ok=True)
    cose_dir.mkdir(parents=True, exist_ok=True)
    for i, key in enumerate(keys):
        for exp in (None, 1_700_000_000):
            claims = {
                "iss": "CN-FUZZ",
                "iat": 1_700_000_000 - 10,
                "cti": os.urandom(16),
                "lic": lic,
            }
            if exp:
                claims["exp"] = exp
            text = key.sign_licence(claims)
            name = f"{key.alg}-{i}-{exp}"
            (text_dir / name).write_text(text)
            (cose_dir / name).write_bytes(zlib.decompress(rust_core.base45_decode(text[5:])))
    print(f"seeds written under {HERE / 'corpus'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
