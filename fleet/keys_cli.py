"""`fleet keys`: make issuing keys and export the trust list auditors carry."""

from __future__ import annotations

import argparse
import os

import rust_core
from fleet.cli_common import CliError, load_public_key, warn, write_atomic

SIGNING_ALGS = ("EdDSA", "ES256", "SM2")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="generate issuing keys; export a trust list")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    gen = keys_sub.add_parser(
        "generate",
        help="make a new private signing key",
        description="Make a new private signing key, write it as unencrypted PKCS#8 PEM "
        "(mode 0600, written atomically) and print its kid (16 hex digits) on stdout.",
    )
    gen.add_argument("--alg", choices=SIGNING_ALGS, default="EdDSA", help="default: EdDSA")
    gen.add_argument("--out", required=True, metavar="KEY.pem", help="private key file to write")
    gen.add_argument("--public", metavar="PUB.pem", help="also write the public key (SPKI PEM)")
    gen.add_argument("--force", action="store_true", help="replace existing files")
    gen.set_defaults(func=run_generate)

    tl = keys_sub.add_parser(
        "trust-list",
        help="export the trust list JSON for a set of keys",
        description="Write the trust list (DESIGN.md format) naming the given keys, which may be "
        "private or public PEM files; only the public keys go into the list.",
    )
    tl.add_argument("--issuer", required=True, help='issuing authority, e.g. "CN-510107"')
    tl.add_argument(
        "--out", metavar="TRUST.json", help="write here (replacing it) instead of stdout"
    )
    tl.add_argument("keys", nargs="+", metavar="KEY.pem", help="private or public key PEM files")
    tl.set_defaults(func=run_trust_list)


def run_generate(args: argparse.Namespace) -> int:
    if args.public is not None and os.path.abspath(args.public) == os.path.abspath(args.out):
        raise CliError("--out and --public must be different files")
    if not args.force:
        for path in (args.out, args.public):
            if path is not None and os.path.lexists(path):
                raise CliError(f"{path!r} already exists (use --force to replace it)")
    key = rust_core.SigningKey.generate(args.alg)
    write_atomic(args.out, key.to_pem().encode(), private=True, overwrite=args.force)
    if args.public is not None:
        write_atomic(args.public, key.public_pem().encode(), overwrite=args.force)
    print(key.kid.hex())
    warn(f"fleet keys: wrote {args.alg} private key {args.out!r} (mode 0600), kid {key.kid.hex()}")
    return 0


def run_trust_list(args: argparse.Namespace) -> int:
    if not args.issuer.strip():
        raise CliError("--issuer must not be empty")
    keys: list[rust_core.VerifyingKey] = []
    seen: dict[bytes, str] = {}
    for path in args.keys:
        key = load_public_key(path)
        if key.kid in seen:
            warn(f"fleet keys: {path!r} is the same key as {seen[key.kid]!r}; listed once")
            continue
        seen[key.kid] = path
        keys.append(key)
    text = rust_core.trust_list_json(keys, args.issuer)
    rust_core.TrustStore.from_json(text)  # what we hand out must load
    if not text.endswith("\n"):
        text += "\n"
    if args.out is None:
        print(text, end="")
    else:
        write_atomic(args.out, text.encode(), overwrite=True)
        warn(f"fleet keys: wrote trust list {args.out!r} ({len(keys)} keys, issuer {args.issuer})")
    return 0
