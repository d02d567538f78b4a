"""The `fleet` command line, run as a user runs it: a subprocess with arguments, stdin and files."""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import rust_core
from fleet.demo import forge_name, sample_uscc, smudge

ISSUER = "CN-510107"
NAME = "成都市武侯区蓉香小吃店"
IAT = 1_767_225_600  # 2026-01-01T00:00:00Z
EXP = IAT + 365 * 24 * 3600
SERIAL = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def fleet(
    *args: str | Path, stdin: str | bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [sys.executable, "-m", "fleet", *map(str, args)],
        input=data,
        capture_output=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    out = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out


def claims_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "iss": ISSUER,
        "iat": IAT,
        "exp": EXP,
        "cti": SERIAL,
        "lic": {
            "1": sample_uscc(),
            "2": NAME,
            "3": "个体工商户",
            "4": "王秀英",
            "5": "四川省成都市武侯区玉林北路12号附3号",
            "7": "2024-03-18",
            "9": "WH-HALL-07",
        },
    }
    doc.update(overrides)
    return doc


def write_json(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def first_tokens(stdout: str) -> list[str]:
    return [line.split("\t")[0] for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An EdDSA key, its trust list and one licence, all made through the command line."""
    d = tmp_path_factory.mktemp("issuer")
    gen = fleet("keys", "generate", "--alg", "EdDSA", "--out", d / "key.pem")
    assert gen.returncode == 0, gen.stderr
    tl = fleet("keys", "trust-list", "--issuer", ISSUER, "--out", d / "trust.json", d / "key.pem")
    assert tl.returncode == 0, tl.stderr
    signed = fleet("sign", "--key", d / "key.pem", write_json(d / "claims.json", claims_doc()))
    assert signed.returncode == 0, signed.stderr
    text = signed.stdout.strip()
    assert text.startswith("LIC1:") and "\n" not in text
    return {
        "dir": d,
        "kid": gen.stdout.strip(),
        "trust": d / "trust.json",
        "key": d / "key.pem",
        "text": text,
    }


AT_VALID = str(IAT + 3600)


# --- fleet verify ------------------------------------------------------------------------------


def test_verify_stdin_one_verdict_per_nonblank_line_in_order(issuer: dict[str, Any]) -> None:
    text = issuer["text"]
    lines = [
        text,
        "",
        f"   {text}  \r",  # a scanner's CR and stray spaces
        forge_name(text, NAME, "成都市武侯区蓉香火锅店"),
        "   ",
        smudge(text),
        "hello, world",
        "LIC1:",
    ]
    r = fleet("verify", "--trust", issuer["trust"], "--at", AT_VALID, stdin="\n".join(lines) + "\n")
    assert r.returncode == 1
    assert first_tokens(r.stdout) == [
        "valid",
        "valid",
        "bad_signature",
        "malformed",
        "malformed",
        "malformed",
    ]


def test_verify_plain_columns(issuer: dict[str, Any]) -> None:
    forged = forge_name(issuer["text"], NAME, "成都市武侯区蓉香火锅店")
    r = fleet(
        "verify",
        "--trust",
        issuer["trust"],
        "--at",
        AT_VALID,
        stdin=f"{issuer['text']}\n{forged}\n",
    )
    valid, bad = (line.split("\t") for line in r.stdout.splitlines())
    assert valid == ["valid", SERIAL, NAME, "-"]
    # A forged name is never shown as if it were the licence holder's.
    assert bad[:3] == ["bad_signature", "-", "-"] and len(bad) == 4 and bad[3]


def test_verify_all_valid_exits_0_and_files_are_read_in_order(
    issuer: dict[str, Any], tmp_path: Path
) -> None:
    a = tmp_path / "a.txt"
    a.write_text(issuer["text"] + "\n" + issuer["text"])  # no final line break
    b = tmp_path / "b.txt"
    b.write_text("\n\n" + issuer["text"] + "\r\n")
    r = fleet(
        "verify", "--trust", issuer["trust"], "--at", AT_VALID, a, "-", b, stdin=issuer["text"]
    )
    assert r.returncode == 0, r.stderr
    assert first_tokens(r.stdout) == ["valid"] * 4


def test_verify_large_file_batches_keep_order(issuer: dict[str, Any], tmp_path: Path) -> None:
    lines = [issuer["text"] if i % 7 else f"garbage {i}" for i in range(3000)]
    f = tmp_path / "many.txt"
    f.write_text("\n".join(lines) + "\n")
    r = fleet("verify", "--trust", issuer["trust"], "--at", AT_VALID, f)
    assert r.returncode == 1
    assert first_tokens(r.stdout) == ["valid" if i % 7 else "malformed" for i in range(3000)]


def test_verify_no_input_exits_0(issuer: dict[str, Any]) -> None:
    r = fleet("verify", "--trust", issuer["trust"], stdin="\n \n")
    assert r.returncode == 0
    assert r.stdout == ""
    assert "no QR texts" in r.stderr


def test_verify_json_shape(issuer: dict[str, Any]) -> None:
    r = fleet(
        "verify",
        "--trust",
        issuer["trust"],
        "--at",
        AT_VALID,
        "--json",
        stdin=f"{issuer['text']}\nnot a licence\n",
    )
    assert r.returncode == 1
    good, bad = (json.loads(line) for line in r.stdout.splitlines())
    assert set(good) == {"verdict", "kid", "alg", "claims"}
    assert good["verdict"] == "valid"
    assert good["kid"] == issuer["kid"]
    assert good["alg"] == "EdDSA"
    claims = good["claims"]
    assert set(claims) == {"iss", "iat", "exp", "cti", "lic"}
    assert claims["iss"] == ISSUER and claims["iat"] == IAT and claims["exp"] == EXP
    assert claims["cti"] == SERIAL
    assert claims["lic"] == claims_doc()["lic"]
    assert bad == {"verdict": "malformed", "kid": None, "alg": None, "claims": None}


def test_verify_json_without_exp_has_null_exp(issuer: dict[str, Any], tmp_path: Path) -> None:
    doc = claims_doc()
    del doc["exp"], doc["iat"]  # iat defaults to now
    signed = fleet("sign", "--key", issuer["key"], write_json(tmp_path / "c.json", doc))
    assert signed.returncode == 0, signed.stderr
    r = fleet("verify", "--trust", issuer["trust"], "--json", stdin=signed.stdout)
    assert r.returncode == 0, r.stdout
    claims = json.loads(r.stdout)["claims"]
    assert claims["exp"] is None
    assert abs(claims["iat"] - time.time()) < 120


def test_verify_time_checks(issuer: dict[str, Any]) -> None:
    def verdict(at: int) -> str:
        return fleet(
            "verify", "--trust", issuer["trust"], "--at", str(at), stdin=issuer["text"]
        ).stdout.split("\t")[0]

    assert verdict(EXP + 1) == "expired"
    assert verdict(IAT - 3600) == "not_yet_valid"
    assert verdict(IAT) == "valid"


def test_verify_revoked(issuer: dict[str, Any], tmp_path: Path) -> None:
    rev = fleet("revocations", "--out", tmp_path / "revoked.json", SERIAL, "00" * 16)
    assert rev.returncode == 0, rev.stderr
    r = fleet(
        "verify",
        "--trust",
        issuer["trust"],
        "--revoked",
        tmp_path / "revoked.json",
        "--at",
        AT_VALID,
        stdin=issuer["text"],
    )
    assert r.returncode == 1
    assert r.stdout.split("\t")[:3] == ["revoked", SERIAL, NAME]


def test_verify_unknown_issuer(issuer: dict[str, Any], tmp_path: Path) -> None:
    other = fleet("keys", "generate", "--alg", "ES256", "--out", tmp_path / "other.pem")
    assert other.returncode == 0
    signed = fleet(
        "sign", "--key", tmp_path / "other.pem", write_json(tmp_path / "c.json", claims_doc())
    )
    r = fleet("verify", "--trust", issuer["trust"], "--at", AT_VALID, stdin=signed.stdout)
    assert (r.returncode, first_tokens(r.stdout)) == (1, ["unknown_kid"])


def test_verify_overlong_and_binary_lines(issuer: dict[str, Any]) -> None:
    huge = b"LIC1:" + b"A" * (3 << 20)  # longer than the reader keeps of one line
    stdin = huge + b"\n\xff\xfe\x00garbage\n" + issuer["text"].encode() + b"\n"
    r = fleet("verify", "--trust", issuer["trust"], "--at", AT_VALID, stdin=stdin)
    assert first_tokens(r.stdout) == ["too_large", "malformed", "valid"]


def test_verify_streams_each_line_as_it_arrives(issuer: dict[str, Any]) -> None:
    """A scanner types one licence and waits: its verdict must come before the next line."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet",
            "verify",
            "--trust",
            str(issuer["trust"]),
            "--at",
            AT_VALID,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for expected, line in (("valid", issuer["text"]), ("malformed", "junk")):
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, "no verdict while stdin is still open"
            assert proc.stdout.readline().decode().split("\t")[0] == expected
        proc.stdin.close()
        assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()
        proc.wait()


def test_verify_bad_usage_exits_2(issuer: dict[str, Any], tmp_path: Path) -> None:
    r = fleet("verify", stdin=issuer["text"])
    assert r.returncode == 2 and "--trust" in r.stderr

    r = fleet("verify", "--trust", tmp_path / "missing.json", stdin=issuer["text"])
    assert r.returncode == 2 and "missing.json" in r.stderr and r.stdout == ""

    r = fleet("verify", "--trust", issuer["trust"], tmp_path / "nope.txt")
    assert r.returncode == 2 and "nope.txt" in r.stderr and r.stdout == ""

    r = fleet("verify", "--trust", issuer["trust"], "--at", "yesterday", stdin=issuer["text"])
    assert r.returncode == 2 and "--at" in r.stderr


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"v": 1, "issuer": "CN-510107", "keys": [{"kid": "00", "alg": "EdDSA", "spki": "AAAA"}]}',
        "\xff",
    ],
    ids=["not-json", "bad-key", "not-utf8"],
)
def test_verify_refused_trust_list_exits_2(
    issuer: dict[str, Any], tmp_path: Path, content: str
) -> None:
    bad = tmp_path / "bad-trust.json"
    bad.write_bytes(content.encode("latin-1") if content == "\xff" else content.encode())
    r = fleet("verify", "--trust", bad, stdin=issuer["text"])
    assert r.returncode == 2
    assert "bad-trust.json" in r.stderr and "error" in r.stderr
    assert r.stdout == ""


def test_verify_kid_mismatch_in_trust_list_is_refused(
    issuer: dict[str, Any], tmp_path: Path
) -> None:
    doc = json.loads(issuer["trust"].read_text())
    doc["keys"][0]["kid"] = "00" * 8
    bad = write_json(tmp_path / "mismatch.json", doc)
    r = fleet("verify", "--trust", bad, stdin=issuer["text"])
    assert r.returncode == 2 and "mismatch.json" in r.stderr


def test_verify_refused_revocation_list_exits_2(issuer: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "revoked.json"
    bad.write_text('{"v": 1, "revoked": ["xyz"]}')
    r = fleet("verify", "--trust", issuer["trust"], "--revoked", bad, stdin=issuer["text"])
    assert r.returncode == 2 and "revoked.json" in r.stderr


# --- fleet keys and fleet sign -----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "SM2"])
def test_generate_sign_verify_roundtrip(alg: str, tmp_path: Path) -> None:
    key, pub = tmp_path / "key.pem", tmp_path / "pub.pem"
    gen = fleet("keys", "generate", "--alg", alg, "--out", key, "--public", pub)
    assert gen.returncode == 0, gen.stderr
    kid = gen.stdout.strip()
    assert len(kid) == 16 and int(kid, 16) >= 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert rust_core.SigningKey.from_pem(key.read_text()).kid.hex() == kid
    assert rust_core.VerifyingKey.from_pem(pub.read_text()).kid.hex() == kid
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    # The trust list can be made from the public key alone.
    tl = fleet("keys", "trust-list", "--issuer", ISSUER, pub)
    assert tl.returncode == 0, tl.stderr
    store = rust_core.TrustStore.from_json(tl.stdout)
    assert store.kids == [bytes.fromhex(kid)] and store.issuer == ISSUER
    (tmp_path / "trust.json").write_text(tl.stdout)

    signed = fleet("sign", "--key", key, write_json(tmp_path / "c.json", claims_doc()))
    assert signed.returncode == 0, signed.stderr
    assert SERIAL in signed.stderr
    r = fleet(
        "verify",
        "--trust",
        tmp_path / "trust.json",
        "--at",
        AT_VALID,
        "--json",
        stdin=signed.stdout,
    )
    assert r.returncode == 0, r.stdout
    out = json.loads(r.stdout)
    assert (out["verdict"], out["alg"], out["kid"]) == ("valid", alg, kid)


def test_trust_list_of_several_keys_loads(tmp_path: Path) -> None:
    paths = []
    for alg in ("EdDSA", "ES256", "SM2"):
        p = tmp_path / f"{alg}.pem"
        assert fleet("keys", "generate", "--alg", alg, "--out", p).returncode == 0
        paths.append(p)
    r = fleet(
        "keys", "trust-list", "--issuer", ISSUER, "--out", tmp_path / "t.json", *paths, paths[0]
    )
    assert r.returncode == 0, r.stderr
    store = rust_core.TrustStore.from_json((tmp_path / "t.json").read_text())
    assert len(store) == 3
    expected = {rust_core.SigningKey.from_pem(p.read_text()).kid for p in paths}
    assert set(store.kids) == expected


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    assert fleet("keys", "generate", "--out", key).returncode == 0
    before = key.read_bytes()
    r = fleet("keys", "generate", "--out", key)
    assert r.returncode == 2 and "already exists" in r.stderr and "--force" in r.stderr
    assert key.read_bytes() == before
    r = fleet("keys", "generate", "--out", tmp_path / "new.pem", "--public", key)
    assert r.returncode == 2 and not (tmp_path / "new.pem").exists()
    r = fleet("keys", "generate", "--out", key, "--force")
    assert r.returncode == 0 and key.read_bytes() != before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_generate_into_missing_folder_exits_2(tmp_path: Path) -> None:
    r = fleet("keys", "generate", "--out", tmp_path / "no" / "key.pem")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_sign_named_lic_fields_and_batch(issuer: dict[str, Any], tmp_path: Path) -> None:
    named = claims_doc(cti=None)
    named["lic"] = {
        "uscc": sample_uscc(),
        "name": NAME,
        "kind": "个体工商户",
        "rep": "王秀英",
        "addr": "四川省成都市武侯区玉林北路12号附3号",
        "est": "2024-03-18",
        "term": "WH-HALL-07",
    }
    out = tmp_path / "licences.txt"
    r = fleet(
        "sign",
        "--key",
        issuer["key"],
        "--out",
        out,
        write_json(tmp_path / "c.json", [named, named]),
    )
    assert r.returncode == 0, r.stderr
    texts = out.read_text().splitlines()
    assert len(texts) == 2 and texts[0] != texts[1]  # fresh random serials
    v = fleet("verify", "--trust", issuer["trust"], "--at", AT_VALID, "--json", out)
    docs = [json.loads(line) for line in v.stdout.splitlines()]
    assert [d["verdict"] for d in docs] == ["valid", "valid"]
    assert docs[0]["claims"]["lic"] == claims_doc()["lic"]
    assert docs[0]["claims"]["cti"] != docs[1]["claims"]["cti"]


def test_sign_invalid_uscc_exits_2(issuer: dict[str, Any], tmp_path: Path) -> None:
    doc = claims_doc()
    good = doc["lic"]["1"]
    doc["lic"]["1"] = good[:17] + ("0" if good[17] != "0" else "1")
    r = fleet("sign", "--key", issuer["key"], write_json(tmp_path / "bad-uscc.json", doc))
    assert r.returncode == 2
    assert "bad-uscc.json" in r.stderr and "refused" in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"iss": ISSUER, "lic": {"1": "x"}, "expiry": 5}, "expiry"),
        ({"iss": ISSUER, "cti": "abcd", "lic": {}}, "cti"),
        ({"iss": ISSUER, "iat": "today", "lic": {}}, "iat"),
        ({"lic": {}}, "iss"),
        ({"iss": ISSUER, "lic": {"colour": "red"}}, "colour"),
        ([], "empty"),
    ],
)
def test_sign_bad_claims_file_exits_2(
    issuer: dict[str, Any], tmp_path: Path, doc: object, message: str
) -> None:
    r = fleet("sign", "--key", issuer["key"], write_json(tmp_path / "c.json", doc))
    assert r.returncode == 2 and message in r.stderr and "c.json" in r.stderr


def test_sign_bad_inputs_exit_2(issuer: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text("{oops")
    r = fleet("sign", "--key", issuer["key"], tmp_path / "c.json")
    assert r.returncode == 2 and "not JSON" in r.stderr
    (tmp_path / "notakey.pem").write_text("hello")
    r = fleet(
        "sign", "--key", tmp_path / "notakey.pem", write_json(tmp_path / "d.json", claims_doc())
    )
    assert r.returncode == 2 and "notakey.pem" in r.stderr


def test_revocations_merge(tmp_path: Path) -> None:
    out = tmp_path / "revoked.json"
    assert fleet("revocations", "--out", out, SERIAL).returncode == 0
    r = fleet("revocations", "--merge", out, "--out", out, "ab" * 16, SERIAL.upper())
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(out.read_text())["revoked"]) == sorted([SERIAL, "ab" * 16])
    r = fleet("revocations", "12345")
    assert r.returncode == 2 and "12345" in r.stderr


# --- fleet demo --------------------------------------------------------------------------------


def test_demo_runs(tmp_path: Path) -> None:
    r = fleet("demo", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    verdicts = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("   ")]
    for verdict in ("valid", "bad_signature", "malformed", "unknown_kid", "expired", "revoked"):
        assert verdict in verdicts
    assert "unexpected" not in r.stdout
    demo = tmp_path / ".demo"
    assert stat.S_IMODE((demo / "issuer-key.pem").stat().st_mode) == 0o600
    again = fleet("verify", "--trust", demo / "trust.json", demo / "licence.txt")
    assert (again.returncode, first_tokens(again.stdout)) == (0, ["valid"])
    # A second run replaces its own files.
    assert fleet("demo", "--dir", demo, cwd=tmp_path).returncode == 0


def test_help_documents_blank_lines_and_exit_status() -> None:
    r = fleet("verify", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "blank lines are skipped" in text and "Exit status" in text


def test_python_dash_m_fleet_cli_works_too(issuer: dict[str, Any]) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet.cli",
            "verify",
            "--trust",
            str(issuer["trust"]),
            "--at",
            AT_VALID,
        ],
        input=issuer["text"].encode(),
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "LANG": "C", "LC_ALL": "C"},
    )
    assert r.returncode == 0
    assert r.stdout.decode("utf-8").split("\t")[2] == NAME


#: Top-level modules of the extras (server, agent, images) and of `dev` alone (httpx).
NOT_STDLIB = frozenset(
    {
        "fastapi",
        "starlette",
        "uvicorn",
        "tortoise",
        "pydantic",
        "pydantic_settings",
        "prometheus_client",
        "jinja2",
        "paho",
        "tuf",
        "securesystemslib",
        "PIL",
        "zxingcpp",
        "httpx",
    }
)


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--help"], set()),
        (["verify", "--help"], set()),
        (["keys", "--help"], set()),
        (["sign", "--help"], set()),
        (["demo", "--help"], set()),
        # The server's commands may load the server's stack, never what only `dev` installs.
        (["serve", "--help"], NOT_STDLIB - {"httpx"}),
        (["tokens", "--help"], NOT_STDLIB - {"httpx"}),
        (["terminals", "--help"], NOT_STDLIB - {"httpx"}),
        # The API clients use the standard library's HTTP.
        (["config", "--help"], set()),
        (["rollouts", "--help"], set()),
    ],
)
def test_a_subcommand_imports_only_what_its_install_has(argv: list[str], allowed: set[str]) -> None:
    """`pip install '.[auditor]'` has no server stack and no httpx: `fleet verify` must not
    import them (scripts/check_installs.sh proves it in fresh virtual environments)."""
    code = (
        "import sys\n"
        "from fleet.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    loaded = set(r.stderr.split())
    assert r.stdout.startswith("usage: fleet"), r.stderr
    assert loaded & NOT_STDLIB <= allowed, sorted(loaded & NOT_STDLIB - allowed)


def test_the_listing_names_every_subcommand_with_its_own_help() -> None:
    """`fleet --help` lists COMMANDS without importing them; it must say what the modules do."""
    import argparse

    from fleet.cli import COMMANDS, build_parser

    def listed(parser: argparse.ArgumentParser) -> dict[str, str | None]:
        (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return {a.dest: a.help for a in sub._choices_actions}

    real = listed(build_parser("*"))
    assert real == {name: c.help for name, c in COMMANDS.items()}
    assert listed(build_parser(None)) == real


def test_the_api_clients_errors_name_the_field_in_words() -> None:
    """A 422's list of errors reaches the operator as `field: message`, not a Python list."""
    from fleet.api_client import _detail

    body = '{"detail": [{"type": "x", "loc": ["body", "paper", "low_pct"], "msg": "1..99"}]}'
    assert _detail(body) == "paper.low_pct: 1..99"
    assert _detail('{"detail": "no such rollout"}') == "no such rollout"
    assert _detail("<html>bad gateway</html>") == "<html>bad gateway</html>"
    # The field is not said twice when the message names it already.
    twice = '{"detail": [{"loc": ["body", "paper", "low_pct"], "msg": "x.paper.low_pct: 150"}]}'
    assert _detail(twice) == "x.paper.low_pct: 150"


def test_refused_server_settings_are_one_line(tmp_path: Path) -> None:
    """`fleet tokens` outside dev mode with the default secrets: one line saying which and how,
    not pydantic's three-line report with its links."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["FLEET_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "fleet", "tokens", "create", "--role", "auditor", "--name", "x"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "FLEET_SESSION_SECRET" in lines[0], done.stderr
    assert "pydantic.dev" not in done.stderr
