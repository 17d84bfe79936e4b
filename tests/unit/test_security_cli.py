"""``xpipe certs``, ``xpipe tokens`` and ``xpipe keys``: output, files, and one-line errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from xpipe._cli import main
from xpipe.security._certs import identity_from_certificate
from xpipe.security._keys import Keyring
from xpipe.security._tokens import TokenAuthenticator


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_certs_init_and_issue(tmp_path, capsys):
    pki = tmp_path / "pki"
    code, out, _ = _run(capsys, "certs", "init", "--dir", str(pki))
    assert code == 0 and json.loads(out) == {"ca_cert": str(pki / "ca.pem"), "ca_key": str(pki / "ca.key")}
    assert stat.S_IMODE(os.stat(pki).st_mode) == 0o700
    code, out, _ = _run(capsys, "certs", "issue", "--dir", str(pki), "--name", "c1", "--role", "coordinator",
                        "--san", "xp.test", "--san", "127.0.0.1", "--days", "90")  # fmt: skip
    assert code == 0 and json.loads(out)["cert"] == str(pki / "c1.pem")
    assert identity_from_certificate((pki / "c1.pem").read_bytes()).name == "c1"


def test_tokens_create_prints_the_token_once_and_it_authenticates(tmp_path, capsys):
    path = tmp_path / "tokens.json"
    code, out, _ = _run(capsys, "tokens", "create", "--file", str(path), "--principal", "dana",
                        "--roles", "submitter,viewer", "--permissions", "customer_data_read", "--namespace", "default")  # fmt: skip
    assert code == 0
    printed = json.loads(out)
    assert set(printed) == {"principal", "token"} and printed["principal"] == "dana"
    p = TokenAuthenticator(path).authenticate(printed["token"])
    assert (
        p.roles == {"submitter", "viewer"}
        and p.permissions == {"customer_data_read"}
        and p.namespaces == {"default"}
    )
    assert printed["token"] not in path.read_text()


def test_tokens_create_accepts_a_policy_role(tmp_path, capsys):
    policy = tmp_path / "policy.toml"
    policy.write_text('[roles.analyst]\npermissions = ["run:read"]\n')
    code, _, err = _run(capsys, "tokens", "create", "--file", str(tmp_path / "t.json"), "--principal", "eve",
                        "--roles", "analyst")  # fmt: skip
    assert code == 2 and "unknown role(s) analyst" in err
    code, out, _ = _run(capsys, "tokens", "create", "--file", str(tmp_path / "t.json"), "--principal", "eve",
                        "--roles", "analyst", "--policy", str(policy))  # fmt: skip
    assert code == 0 and json.loads(out)["principal"] == "eve"


def test_keys_create_then_rotate(tmp_path, capsys):
    path = tmp_path / "keys.json"
    code, out, _ = _run(capsys, "keys", "create", "--file", str(path))
    first = json.loads(out)["active_key"]
    code, out, _ = _run(capsys, "keys", "rotate", "--file", str(path))
    second = json.loads(out)["active_key"]
    ring = Keyring.load(path)
    assert code == 0 and ring.active == second != first and set(ring.key_ids) == {first, second}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["certs", "issue", "--dir", "{d}", "--name", "x", "--role", "boss"], "--role 'boss': unknown role"),
        (
            ["certs", "issue", "--dir", "{d}", "--name", "x", "--role", "worker", "--days", "soon"],
            "--days 'soon'",
        ),
        (["certs", "issue", "--dir", "{d}", "--name", "x", "--role", "worker", "--days", "-3"], "--days -3"),
        (["certs", "init", "--dir", "{d}"], "ca.pem already exists; refusing to overwrite"),
        (["certs", "init", "--dir", "{d}/ca.pem/sub"], "cannot create"),
        (
            ["tokens", "create", "--file", "{d}/t.json", "--principal", "x", "--roles", "root"],
            "unknown role(s) root",
        ),
        (
            ["tokens", "create", "--file", "{d}/none/t.json", "--principal", "x", "--roles", "viewer"],
            "does not exist",
        ),
        (
            ["tokens", "create", "--file", "{d}/t.json", "--principal", "a b", "--roles", "viewer"],
            "invalid principal",
        ),
        (["keys", "rotate", "--file", "{d}/missing.json"], "cannot read"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    assert main(["certs", "init", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    code, out, err = _run(capsys, *[a.replace("{d}", str(tmp_path)) for a in argv])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_the_installed_command_exits_2_on_an_existing_keyring(tmp_path):
    """Through the real console entry point: status, one line, and the file is untouched."""
    path = tmp_path / "keys.json"
    run = [sys.executable, "-m", "xpipe._cli", "keys", "create", "--file", str(path)]
    assert subprocess.run(run, check=False, capture_output=True, timeout=60).returncode == 0
    before = path.read_bytes()
    again = subprocess.run(run, check=False, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert (
        again.stderr.strip()
        == f"xpipe keys: SecurityConfigError: {path} already exists; refusing to overwrite it"
    )
    assert path.read_bytes() == before
