"""Starting a coordinator securely: the non-loopback refusal, --insecure, bad settings,
JWT expiry and an LDAP server that does not answer (fail closed). Real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import jwt
import pytest
from xpipe._client import Client
from xpipe._proto import pipeline_pb2, pipeline_pb2_grpc
from xpipe.errors import AuthenticationError
from xpipe.security._errors import SecurityConfigError
from xpipe.security._tls import TLSConfig

from tests.harness import Proc, SecureSetup, child_env, eventually, free_port

START_TIMEOUT_S = 30.0


def _coordinator_fails(tmp_path, *args: str) -> str:
    """Run a coordinator that must refuse to start; its stderr."""
    argv = [sys.executable, "-m", "xpipe.coordinator", "--data-dir", str(tmp_path / "data"), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S, env=child_env(), cwd=tmp_path,
                         check=False)
    assert out.returncode != 0, out.stdout
    return out.stderr.strip().splitlines()[-1]


def _serving(tmp_path, *args: str) -> tuple[Proc, str]:
    ready = tmp_path / "ready"
    argv = [sys.executable, "-m", "xpipe.coordinator", "--data-dir", str(tmp_path / "data"),
            "--ready-file", str(ready), *args]  # fmt: skip
    proc = Proc("coordinator", argv, log_dir=tmp_path / "logs", cwd=tmp_path)
    try:
        def up() -> bool:
            if not proc.alive():
                raise AssertionError(f"coordinator exited {proc.returncode}: {proc.log_tail()}")
            return ready.exists() and ready.read_text().strip() != ""

        eventually(up, timeout_s=START_TIMEOUT_S, message="coordinator serving")
    except BaseException:
        proc.kill()
        raise
    return proc, ready.read_text().strip()


def test_listening_off_loopback_without_tls_and_auth_is_refused(tmp_path):
    line = _coordinator_fails(tmp_path, "--listen", "0.0.0.0:0")
    assert "refusing to listen on non-loopback 0.0.0.0:0 without TLS and authentication" in line
    assert "--tls-cert/--tls-key" in line and "--auth" in line and "--insecure" in line


def test_tls_alone_off_loopback_is_refused_naming_authentication(tmp_path):
    setup = SecureSetup(tmp_path)
    cert, key = setup.cert("coordinator")
    line = _coordinator_fails(tmp_path, "--listen", "0.0.0.0:0", "--tls-cert", cert, "--tls-key", key)
    assert "without authentication" in line and "without TLS" not in line


def test_insecure_starts_off_loopback(tmp_path):
    proc, address = _serving(tmp_path, "--listen", "0.0.0.0:0", "--insecure")
    try:
        port = address.rpartition(":")[2]
        with Client(f"127.0.0.1:{port}", connect_timeout_s=5) as client:  # it binds every address, loopback too
            assert client.list_runs() == []
    finally:
        assert proc.terminate() == 0


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--tls-cert", "{pki}/coordinator.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "{pki}/coordinator.pem", "--tls-key", "{pki}/coordinator.key", "--tls-client-auth", "require"],
         "--tls-client-auth require needs --tls-ca"),
        (["--tls-cert", "{pki}/missing.pem", "--tls-key", "{pki}/coordinator.key"], "missing.pem': cannot read"),
        (["--tls-ca", "{pki}/ca.pem"], "need --tls-cert and --tls-key"),
        (["--auth", "tokens:{pki}/none.json"], "no tokens file at"),
        (["--policy", "{pki}/ca.pem"], "not valid TOML"),
    ],
    ids=["cert-without-key", "mtls-without-ca", "missing-cert", "ca-without-tls", "no-tokens-file", "bad-policy"],
)
def test_bad_security_settings_are_refused_naming_the_problem(tmp_path, args, named):
    setup = SecureSetup(tmp_path, principals={"admin": ["admin"]})
    line = _coordinator_fails(tmp_path, "--listen", "127.0.0.1:0", *(a.format(pki=setup.pki) for a in args))
    assert named in line


def test_tls_config_checks_its_files_when_made(tmp_path):
    with pytest.raises(SecurityConfigError, match="CA file '.*nope.pem': cannot read"):
        TLSConfig(ca=str(tmp_path / "nope.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(SecurityConfigError, match="junk.pem': not a PEM file"):
        TLSConfig(ca=str(tmp_path / "junk.pem"))
    with pytest.raises(SecurityConfigError, match="give both cert and key"):
        TLSConfig(cert=str(tmp_path / "junk.pem"))


def test_an_expired_jwt_is_refused_and_a_valid_one_admitted(tmp_path):
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(b"s" * 48)
    proc, address = _serving(tmp_path, "--listen", "127.0.0.1:0", "--auth", f"jwt:hs256:{secret}")
    try:
        def token(exp_s: float) -> str:
            claims = {"sub": "dana", "aud": "xpipe", "exp": int(time.time() + exp_s), "roles": ["viewer"]}
            return jwt.encode(claims, secret.read_bytes(), algorithm="HS256")

        with (
            Client(address, connect_timeout_s=5, token=token(-60)) as client,
            pytest.raises(AuthenticationError, match="UNAUTHENTICATED"),
        ):
            client.list_runs()
        with Client(address, connect_timeout_s=5, token=token(600)) as client:
            assert client.list_runs() == []
        with (
            Client(address, connect_timeout_s=5) as client,
            pytest.raises(AuthenticationError, match="no valid credential; run:read"),
        ):  # no credential at all
            client.list_runs()
    finally:
        assert proc.terminate() == 0


def test_an_ldap_server_that_does_not_answer_fails_closed_with_unavailable(tmp_path):
    settings = tmp_path / "ldap.toml"
    settings.write_text('user_dn_template = "uid={user},ou=people,dc=example,dc=org"\n'
                        'group_base = "ou=groups,dc=example,dc=org"\ntimeout_s = 1.0\n')  # fmt: skip
    dead = f"ldap://127.0.0.1:{free_port()}"  # nothing listens there
    proc, address = _serving(tmp_path, "--listen", "127.0.0.1:0", "--auth", dead, "--ldap-config", str(settings))
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            basic = (("authorization", "Basic ZGFuYTpzZWNyZXQ="),)  # dana:secret
            with pytest.raises(grpc.RpcError) as exc:
                stub.ListRuns(pipeline_pb2.ListRunsRequest(), metadata=basic, timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot check credentials now" in exc.value.details() and dead in exc.value.details()
    finally:
        assert proc.terminate() == 0
