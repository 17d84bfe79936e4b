"""LdapAuthenticator against a real OpenLDAP ``slapd`` on a loopback port.

The fixture writes a throwaway ``slapd.conf`` (mdb backend in tmp), loads two users and two
groups offline with ``slapadd``, and runs ``slapd`` in the foreground as a harness
:class:`Proc` on ``ldap://127.0.0.1:<free port>``. Start-up takes well under a second.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from xpipe.security._errors import AuthUnavailableError, SecurityConfigError
from xpipe.security._ldap import LdapAuthenticator, LdapConfig

from tests.harness import Proc, eventually, free_port


def _find(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")


SLAPD, SLAPADD = _find("slapd"), _find("slapadd")
pytestmark = pytest.mark.skipif(
    SLAPD is None or SLAPADD is None,
    reason="slapd/slapadd not installed (Debian packages slapd, ldap-utils; `make install` adds them)",
)

BASE = "dc=xpipe,dc=test"
PEOPLE, GROUPS = f"ou=people,{BASE}", f"ou=groups,{BASE}"
OPS, ANALYSTS = f"cn=ops,{GROUPS}", f"cn=analysts,{GROUPS}"
SCHEMA_DIR = Path("/etc/ldap/schema")

SLAPD_CONF = """\
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {tmp}/slapd.pid
database mdb
maxsize 10485760
suffix "{base}"
rootdn "cn=admin,{base}"
directory {tmp}/data
access to attrs=userPassword by self read by anonymous auth by * none
access to * by users read by * none
"""

DATA = f"""\
dn: {BASE}
objectClass: dcObject
objectClass: organization
o: xpipe test
dc: xpipe

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people

dn: {GROUPS}
objectClass: organizationalUnit
ou: groups

dn: uid=alice,{PEOPLE}
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
userPassword: alice-secret

dn: uid=bob,{PEOPLE}
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
userPassword: bob-secret

dn: {OPS}
objectClass: groupOfNames
cn: ops
member: uid=alice,{PEOPLE}

dn: {ANALYSTS}
objectClass: groupOfNames
cn: analysts
member: uid=alice,{PEOPLE}
member: uid=bob,{PEOPLE}
"""


@pytest.fixture(scope="module")
def slapd_url(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("slapd")
    (tmp / "data").mkdir()
    conf = tmp / "slapd.conf"
    conf.write_text(SLAPD_CONF.format(schema=SCHEMA_DIR, tmp=tmp, base=BASE))
    (tmp / "data.ldif").write_text(DATA)
    loaded = Proc("slapadd", [SLAPADD, "-f", conf, "-l", tmp / "data.ldif"], log_dir=tmp / "logs")
    status = loaded.wait(30)
    loaded.terminate()  # reaps it
    assert status == 0, f"slapadd failed:\n{loaded.log_tail()}"
    port = free_port()
    # -d keeps slapd in the foreground (no fork), so the harness owns the process and its group.
    proc = Proc(
        "slapd", [SLAPD, "-d", "0", "-f", conf, "-h", f"ldap://127.0.0.1:{port}/"], log_dir=tmp / "logs"
    )
    try:
        eventually(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
                   timeout_s=15, message=f"slapd listening on {port}")  # fmt: skip
        yield f"ldap://127.0.0.1:{port}"
    finally:
        proc.terminate(timeout_s=5)


def _config(**over) -> LdapConfig:
    values = {"user_dn_template": f"uid={{user}},{PEOPLE}", "group_base": GROUPS,
              "group_roles": {OPS: ["operator"], ANALYSTS.upper(): "submitter"}, "timeout_s": 2.0}  # fmt: skip
    values.update(over)
    return LdapConfig(**values)


@pytest.fixture(scope="module")
def ldap(slapd_url) -> LdapAuthenticator:
    return LdapAuthenticator(slapd_url, _config())


def test_right_password_gives_the_roles_of_the_users_groups(ldap):
    alice = ldap.authenticate("alice", "alice-secret")
    assert (alice.name, alice.roles, alice.source) == ("alice", frozenset({"operator", "submitter"}), "ldap")
    assert ldap.authenticate("bob", "bob-secret").roles == frozenset({"submitter"})


def test_wrong_password_unknown_user_and_empty_password_are_refused(ldap):
    assert ldap.authenticate("alice", "bob-secret") is None
    assert ldap.authenticate("carol", "alice-secret") is None
    assert (
        ldap.authenticate("alice", "") is None
    )  # an empty password would be an anonymous bind that succeeds
    assert ldap.authenticate("", "alice-secret") is None


def test_dn_injection_in_the_user_name_is_refused(ldap):
    assert ldap.authenticate("alice,ou=people", "alice-secret") is None
    assert ldap.authenticate("*", "alice-secret") is None


def test_a_group_without_a_mapped_role_grants_nothing(slapd_url):
    auth = LdapAuthenticator(slapd_url, _config(group_roles={OPS: ["operator"]}))
    assert auth.authenticate("bob", "bob-secret").roles == frozenset()


def test_server_down_is_a_clear_error_quickly():
    url = f"ldap://127.0.0.1:{free_port()}"  # nothing listens there
    auth = LdapAuthenticator(url, _config(timeout_s=1.0))
    started = time.monotonic()
    with pytest.raises(AuthUnavailableError, match=rf"LDAP {url} did not answer within 1 s"):
        auth.authenticate("alice", "alice-secret")
    assert time.monotonic() - started < 3.0


def test_a_server_that_accepts_but_never_answers_times_out():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or replies
        url = f"ldap://127.0.0.1:{silent.getsockname()[1]}"
        auth = LdapAuthenticator(url, _config(timeout_s=1.0))
        started = time.monotonic()
        with pytest.raises(AuthUnavailableError, match=rf"LDAP {url}"):
            auth.authenticate("alice", "alice-secret")
        assert 0.9 <= time.monotonic() - started < 4.0


def test_settings_file_is_validated(tmp_path):
    path = tmp_path / "ldap.toml"
    path.write_text(f'user_dn_template = "uid={{user}},{PEOPLE}"\ngroup_base = "{GROUPS}"\n'
                    f'[group_roles]\n"{OPS}" = ["operator"]\n')  # fmt: skip
    assert LdapConfig.load(path).group_roles == {OPS.lower(): ("operator",)}
    path.write_text(
        f'user_dn_template = "uid={{user}},{PEOPLE}"\ngroup_base = "{GROUPS}"\nbind_password = "x"\n'
    )
    with pytest.raises(SecurityConfigError, match=r"unknown key\(s\) bind_password"):
        LdapConfig.load(path)
    path.write_text(f'group_base = "{GROUPS}"\n')
    with pytest.raises(SecurityConfigError, match=r"missing key\(s\) user_dn_template"):
        LdapConfig.load(path)
    with pytest.raises(SecurityConfigError, match="must contain"):
        _config(user_dn_template=PEOPLE)
    with pytest.raises(SecurityConfigError, match="expected ldap://HOST"):
        LdapAuthenticator("http://127.0.0.1:389", _config())


def test_a_coordinator_with_ldap_auth_admits_by_password_and_roles_from_groups(slapd_url, tmp_path):
    """Over the wire: the SDK sends ``user:password`` as ``Basic``; groups give the roles."""
    import sys

    from xpipe._client import Client
    from xpipe.errors import AuthenticationError, PermissionDeniedError

    settings = tmp_path / "ldap.toml"
    settings.write_text(f'user_dn_template = "uid={{user}},{PEOPLE}"\ngroup_base = "{GROUPS}"\ntimeout_s = 2.0\n'
                        f'[group_roles]\n"{OPS}" = ["operator"]\n"{ANALYSTS}" = ["submitter"]\n')  # fmt: skip
    ready = tmp_path / "ready"
    argv = [sys.executable, "-m", "xpipe.coordinator", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
            "--ready-file", str(ready), "--auth", slapd_url, "--ldap-config", str(settings)]  # fmt: skip
    proc = Proc("coordinator", argv, log_dir=tmp_path / "logs", cwd=tmp_path)
    try:
        address = eventually(lambda: ready.exists() and ready.read_text().strip(), timeout_s=30,
                             message="coordinator serving")  # fmt: skip
        with Client(address, connect_timeout_s=5, token="alice:alice-secret") as alice:
            assert alice.list_workers() == []
            assert alice.drain("nobody") is False  # operator: allowed (no such worker)
        with Client(address, connect_timeout_s=5, token="bob:bob-secret") as bob, pytest.raises(
            PermissionDeniedError, match="'bob' lacks permission worker:drain"
        ):
            bob.drain("nobody")
        with Client(address, connect_timeout_s=5, token="alice:wrong") as wrong, pytest.raises(
            AuthenticationError, match="UNAUTHENTICATED"
        ):
            wrong.list_workers()
    finally:
        proc.terminate()
