"""A secure cluster end to end: mTLS, tokens, RBAC and namespaces with real processes.

One coordinator (``--tls-client-auth require``, ``--auth tokens:``, ``--policy``) and one
worker that connects with a ``worker`` certificate, per module. Each of the issue's
refusals is driven through the SDK and checked for its exception and the permission (or
namespace) its message names.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest
from xpipe import Pipeline, PipelineManager, Task
from xpipe._client import Client
from xpipe.errors import AuthenticationError, PermissionDeniedError
from xpipe.security._certs import init_ca, issue_cert
from xpipe.security._tls import TLSConfig

from tests import helpers_tasks as ht
from tests.harness import Cluster, Proc, SecureSetup, child_env, eventually

CONNECT_TIMEOUT_S = 5.0
#: A TLS mismatch is reported at the first attempt: well within the clients' 30 s connect timeout.
FAIL_FAST_S = 10.0
PRINCIPALS = {**SecureSetup.DEFAULT_PRINCIPALS, "teama": ["submitter"], "teamb": ["submitter"]}
NAMESPACES = {"teama": ["team-a"], "teamb": ["team-b"]}


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure-cluster")
    setup = SecureSetup(tmp, principals=PRINCIPALS, namespaces=NAMESPACES)
    with Cluster(tmp, workers=1, slots=2, security=setup) as cluster:
        yield cluster, setup


def _client(cluster: Cluster, principal: str, **kwargs) -> Client:
    return Client(cluster.address, connect_timeout_s=CONNECT_TIMEOUT_S, **cluster.client_options(principal), **kwargs)


def _pipeline(name: str = "secure", namespace: str | None = None) -> Pipeline:
    p = Pipeline(name, namespace=namespace)
    first = Task("first", ht.echo, args=(21,))
    p.add_tasks([first, Task("second", ht.double, depends_on=[first])])
    return p


def test_a_pipeline_runs_end_to_end_over_mtls_with_a_token(secure):
    cluster, _ = secure
    # The worker joined with its certificate alone (no token): the cert is its identity.
    assert "--token" not in cluster.workers["w0"].argv
    assert [w.name for w in cluster.list_workers()] == ["w0"]
    with PipelineManager(coordinator=cluster.address, connect_timeout_s=CONNECT_TIMEOUT_S,
                         **cluster.client_options("submitter")) as pm:  # fmt: skip
        result = pm.execute_pipeline(_pipeline(), monitor=False)
        assert result.outputs["second"] == 42
        assert pm.client.task_result(result.run_id, "second").value == 42


def test_a_plaintext_client_fails_fast_saying_tls_is_needed(secure):
    cluster, _ = secure
    started = time.monotonic()
    with (
        Client(cluster.address, connect_timeout_s=30, tls=False) as client,
        pytest.raises(AuthenticationError, match="speaks TLS.*XPIPE_TLS_CA"),
    ):
        client.list_runs()
    assert time.monotonic() - started < FAIL_FAST_S  # not after connect_timeout_s of retries


def test_a_client_certificate_from_another_ca_is_refused_by_the_handshake(secure, tmp_path):
    cluster, setup = secure
    other = tmp_path / "other"
    init_ca(other)
    issue_cert(other, name="client", role="client")
    tls = TLSConfig(ca=setup.ca, cert=str(other / "client.pem"), key=str(other / "client.key"))
    with (
        grpc.secure_channel(cluster.address, tls.channel_credentials()) as channel,
        pytest.raises(grpc.RpcError) as exc,
    ):
        channel.unary_unary("/xpipe.v1.PipelineService/ListRuns")(b"", timeout=CONNECT_TIMEOUT_S)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # no TLS session, so no call at all
    started = time.monotonic()
    with (
        Client(cluster.address, connect_timeout_s=30, tls=tls, token=setup.tokens["admin"]) as client,
        pytest.raises(AuthenticationError, match="refused this client's certificate"),
    ):
        client.list_runs()
    assert time.monotonic() - started < FAIL_FAST_S


def test_a_viewer_cannot_submit(secure):
    cluster, _ = secure
    with _client(cluster, "viewer") as client:
        assert isinstance(client.list_runs(), list)  # viewers read
        with pytest.raises(PermissionDeniedError, match="'viewer' lacks permission run:submit"):
            client.submit(_pipeline())
        # Submit-and-watch needs run:submit too, not only run:read.
        with pytest.raises(PermissionDeniedError, match="run:submit"):
            list(client.submit_and_watch(_pipeline()))


def test_a_submitter_cannot_drain(secure):
    cluster, _ = secure
    with (
        _client(cluster, "submitter") as client,
        pytest.raises(PermissionDeniedError, match="'submitter' lacks permission worker:drain"),
    ):
        client.drain("w0")
    assert [w.state for w in cluster.list_workers()] != ["draining"]


def test_a_bad_token_is_refused_even_with_a_valid_certificate(secure):
    cluster, setup = secure
    with (
        Client(cluster.address, connect_timeout_s=CONNECT_TIMEOUT_S, tls=setup.tls(), token="xpt_revoked") as client,
        pytest.raises(AuthenticationError, match="UNAUTHENTICATED"),
    ):
        client.list_runs()


def test_a_worker_whose_token_lacks_the_worker_role_exits_saying_why(secure):
    cluster, setup = secure
    # A client certificate and a submitter token: the token wins, and lacks worker:connect.
    argv = [sys.executable, "-m", "xpipe.worker", "--coordinator", cluster.address, "--name", "intruder",
            "--tls-ca", setup.ca, "--tls-cert", setup.cert("client")[0], "--tls-key", setup.cert("client")[1],
            "--token", setup.tokens["submitter"]]  # fmt: skip
    proc = Proc("intruder", argv, log_dir=cluster.log_dir, cwd=cluster.tmp_path)
    try:
        assert proc.wait(timeout_s=30) == 2
    finally:
        proc.kill()
    log = proc.log_text()
    assert "refused this worker's credential (PERMISSION_DENIED" in log and "worker:connect" in log, log
    assert "intruder" not in [w.name for w in cluster.list_workers()]


def test_a_principal_outside_the_runs_namespace_cannot_read_it(secure):
    cluster, _ = secure
    with _client(cluster, "teama") as a:
        run_id = a.submit(_pipeline("team-a-run", namespace="team-a"))
        eventually(lambda: a.get_run(run_id).summary.state == "SUCCEEDED", timeout_s=30, message="team-a's run done")
        assert a.task_result(run_id, "second").value == 42
        assert run_id in [r.run_id for r in a.list_runs()]
        with pytest.raises(PermissionDeniedError, match="namespace 'default'"):
            a.submit(_pipeline("elsewhere"))  # its token allows team-a only
    with (
        _client(cluster, "teamb") as b,
        pytest.raises(PermissionDeniedError, match="'teamb' may not act in namespace 'team-a'"),
    ):
        b.task_result(run_id, "second")
        with pytest.raises(PermissionDeniedError, match="namespace 'team-a'"):
            b.cancel(run_id)
        assert run_id not in [r.run_id for r in b.list_runs()]  # filtered out, not refused
    with _client(cluster, "teamb", namespace="team-b") as b:
        assert b.submit(_pipeline("team-b-run"))  # the client's namespace applies


def test_the_cli_prints_one_line_and_exits_non_zero_when_refused(secure):
    cluster, setup = secure
    cert, key = setup.cert("client")
    base = [sys.executable, "-m", "xpipe._cli", "--coordinator", cluster.address, "--tls-ca", setup.ca,
            "--tls-cert", cert, "--tls-key", key]  # fmt: skip
    refused = subprocess.run([*base[:3], "drain", "w0", *base[3:], "--token", setup.tokens["submitter"]],
                             capture_output=True, text=True, timeout=60, env=child_env(), check=False)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "xpipe drain: PermissionDeniedError: PERMISSION_DENIED: principal 'submitter' lacks permission worker:drain"
    ]
    allowed = subprocess.run([*base[:3], "workers", *base[3:], "--json"], capture_output=True, text=True,
                             timeout=60, env=child_env({"XPIPE_TOKEN": setup.tokens["viewer"]}), check=False)  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert [w["name"] for w in json.loads(allowed.stdout)] == ["w0"]
