"""The keyring: AES-256-GCM round trips, rotation, tampering and missing keys."""

from __future__ import annotations

import json
import os
import stat

import pytest
from xpipe.security._errors import DecryptionError, SecurityConfigError
from xpipe.security._keys import MAGIC, NONCE_BYTES, Keyring, create_keyring, rotate_keyring

MARKER = b"marker-7f3a: customer 42 owes 1000 EUR"


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "keys.json"
    create_keyring(path)
    return path


def test_create_writes_one_active_256_bit_key_0600(keyfile):
    assert stat.S_IMODE(os.stat(keyfile).st_mode) == 0o600
    ring = Keyring.load(keyfile)
    assert len(ring.key_ids) == 1 and ring.active == ring.key_ids[0]
    with pytest.raises(SecurityConfigError, match="already exists"):
        create_keyring(keyfile)


def test_round_trip_and_the_plaintext_is_not_in_the_blob(keyfile):
    ring = Keyring.load(keyfile)
    blob = ring.encrypt(MARKER, aad=b"result:run1/t")
    assert MARKER not in blob and b"customer" not in blob
    assert blob.startswith(MAGIC) and ring.key_id_of(blob) == ring.active
    assert ring.decrypt(blob, aad=b"result:run1/t") == MARKER
    assert ring.encrypt(MARKER) != ring.encrypt(MARKER)  # a fresh nonce each time
    assert ring.decrypt(ring.encrypt(b"")) == b""


def test_rotate_keeps_old_data_readable_and_new_data_uses_the_new_key(keyfile):
    old_ring = Keyring.load(keyfile)
    old_blob = old_ring.encrypt(MARKER)
    new_id = rotate_keyring(keyfile)
    assert stat.S_IMODE(os.stat(keyfile).st_mode) == 0o600
    ring = Keyring.load(keyfile)
    assert ring.active == new_id != old_ring.active
    assert set(ring.key_ids) == {old_ring.active, new_id}
    assert ring.decrypt(old_blob) == MARKER
    new_blob = ring.encrypt(MARKER)
    assert ring.key_id_of(new_blob) == new_id
    with pytest.raises(DecryptionError, match=f"key id '{new_id}' is not in keyring"):
        old_ring.decrypt(new_blob)  # a process still on the old ring names what it lacks


def test_wrong_aad_and_every_tampered_byte_are_refused(keyfile):
    ring = Keyring.load(keyfile)
    blob = ring.encrypt(MARKER, aad=b"result:run1/a")
    with pytest.raises(DecryptionError, match="failed authentication"):
        ring.decrypt(blob, aad=b"result:run1/b")
    header_len = 5 + blob[4]
    for i in [header_len, header_len + NONCE_BYTES, len(blob) // 2, len(blob) - 1]:
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(DecryptionError, match="failed authentication"):
            ring.decrypt(bytes(tampered), aad=b"result:run1/a")


def test_bad_headers_are_named(keyfile):
    ring = Keyring.load(keyfile)
    blob = ring.encrypt(MARKER)
    with pytest.raises(DecryptionError, match="bad magic"):
        ring.decrypt(b"plain old data")
    with pytest.raises(DecryptionError, match="unsupported encrypted-data version 9"):
        ring.decrypt(blob[:3] + b"\x09" + blob[4:])
    with pytest.raises(DecryptionError, match="truncated"):
        ring.decrypt(blob[:10])
    renamed = blob[:5] + b"kzzzzzzzz" + blob[5 + blob[4] :]
    with pytest.raises(DecryptionError, match="key id 'kzzzzzzzz' is not in keyring .*it has: "):
        ring.decrypt(renamed)


def test_malformed_keyrings_are_refused_naming_the_field(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"version": 1, "active": "a", "keys": [{"id": "a", "key": "AAAA"}]}))
    with pytest.raises(SecurityConfigError, match=r"keys\[0\] \(a\) is 3 bytes, expected 32"):
        Keyring.load(path)
    path.write_text(json.dumps({"version": 1, "keys": []}))
    with pytest.raises(SecurityConfigError, match="missing field 'active'"):
        Keyring.load(path)
    with pytest.raises(SecurityConfigError, match="cannot read"):
        Keyring.load(tmp_path / "none.json")
    with pytest.raises(SecurityConfigError, match="cannot rotate|cannot read"):
        rotate_keyring(tmp_path / "none.json")


def test_a_keyring_readable_by_others_loads_with_a_warning(keyfile, caplog):
    os.chmod(keyfile, 0o644)
    ring = Keyring.load(keyfile)
    assert ring.decrypt(ring.encrypt(MARKER)) == MARKER
    assert "readable by group or others (mode 644); chmod 600 it" in caplog.text
