"""The tokens file and TokenAuthenticator: hashes only, 0600, atomic, reloaded on change."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
from xpipe.security._errors import SecurityConfigError
from xpipe.security._tokens import (
    TOKEN_PREFIX,
    TokenAuthenticator,
    create_token,
    hash_token,
    read_tokens_file,
)


def test_create_stores_only_the_hash_with_private_mode(tmp_path):
    path = tmp_path / "tokens.json"
    token = create_token(
        path, "dana", roles=["submitter"], permissions=["customer_data_read"], namespaces=["default"]
    )
    assert token.startswith(TOKEN_PREFIX) and len(token) >= len(TOKEN_PREFIX) + 43  # 32 random bytes, base64
    text = path.read_text()
    assert token not in text and token[len(TOKEN_PREFIX) :] not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    (entry,) = json.loads(text)["tokens"]
    assert entry["sha256"] == hash_token(token)
    assert (entry["principal"], entry["roles"], entry["permissions"], entry["namespaces"]) == (
        "dana", ["submitter"], ["customer_data_read"], ["default"])  # fmt: skip
    assert entry["created_at"] > 0


def test_authenticate_returns_the_principal_of_a_good_token_only(tmp_path):
    path = tmp_path / "tokens.json"
    dana = create_token(path, "dana", roles=["submitter"], namespaces=["default"])
    ops = create_token(path, "ops", roles=["operator"])
    auth = TokenAuthenticator(path)
    p = auth.authenticate(dana)
    assert (p.name, p.roles, p.namespaces, p.source) == (
        "dana",
        frozenset({"submitter"}),
        frozenset({"default"}),
        "token",
    )
    assert auth.authenticate(ops).namespaces is None
    assert auth.authenticate(dana[:-1] + ("A" if dana[-1] != "A" else "B")) is None
    assert auth.authenticate("") is None
    assert auth.authenticate(hash_token(dana)) is None  # the stored hash is not a credential


def test_appending_keeps_existing_entries_and_tokens_are_unique(tmp_path):
    path = tmp_path / "tokens.json"
    tokens = [create_token(path, f"p{i}", roles=["viewer"]) for i in range(5)]
    assert len(set(tokens)) == 5
    assert [e.principal.name for e in read_tokens_file(path)] == [f"p{i}" for i in range(5)]


def test_concurrent_creates_lose_no_entry(tmp_path):
    path = tmp_path / "tokens.json"
    threads = [threading.Thread(target=create_token, args=(path, f"p{i}"), kwargs={"roles": ["viewer"]})
               for i in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e.principal.name for e in read_tokens_file(path)) == [f"p{i}" for i in range(8)]


def test_reload_when_the_file_changes_and_keep_old_entries_on_a_broken_file(tmp_path, caplog):
    path = tmp_path / "tokens.json"
    first = create_token(path, "a", roles=["viewer"])
    now = [0.0]
    auth = TokenAuthenticator(path, reload_interval_s=1.0, clock=lambda: now[0])
    second = create_token(path, "b", roles=["viewer"])
    assert auth.authenticate(second) is None  # not looked at again within the interval
    now[0] = 1.5
    assert auth.authenticate(second).name == "b"
    path.write_text("{ half written")
    now[0] = 3.0
    assert auth.authenticate(first).name == "a"  # the previous entries stay
    assert "reload failed" in caplog.text and "not valid JSON" in caplog.text
    path.write_text(json.dumps({"version": 1, "tokens": []}))
    now[0] = 4.5
    assert auth.authenticate(first) is None  # revoked by removing its line


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"roles": []}, "at least one role or permission"),
        ({"roles": ["boss"], "known_roles": ["viewer"]}, r"unknown role\(s\) boss"),
        ({"roles": ["viewer"], "namespaces": ["bad ns"]}, "invalid namespace 'bad ns'"),
    ],
)
def test_bad_create_input_is_refused_and_the_file_untouched(tmp_path, kwargs, match):
    path = tmp_path / "tokens.json"
    create_token(path, "keep", roles=["viewer"])
    before = path.read_bytes()
    with pytest.raises(SecurityConfigError, match=match):
        create_token(path, "x", **kwargs)
    assert path.read_bytes() == before


def test_a_malformed_file_is_refused_at_start_naming_the_entry(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"version": 1, "tokens": [{"sha256": "ab", "principal": "x", "roles": []}]}))
    with pytest.raises(SecurityConfigError, match=r"tokens\[0\]: sha256 must be 64"):
        TokenAuthenticator(path)
    path.write_text(
        json.dumps({"version": 1, "tokens": [{"sha256": "0" * 64, "principal": "x", "token": "t"}]})
    )
    with pytest.raises(SecurityConfigError, match=r"tokens\[0\]: unknown key\(s\) token"):
        TokenAuthenticator(path)
    with pytest.raises(SecurityConfigError, match="directory .* does not exist"):
        create_token(tmp_path / "no" / "t.json", "x", roles=["viewer"])
