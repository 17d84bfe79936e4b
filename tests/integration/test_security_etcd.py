"""The etcd store over TLS: a real etcd serving TLS with ``--client-cert-auth``, and a real
coordinator that reaches it with ``--etcd-ca/--etcd-cert/--etcd-key``, runs a pipeline, and
whose runs are in etcd. Without the flags the coordinator cannot lead (etcd refuses it)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from xpipe import Pipeline, PipelineManager, Task
from xpipe.coordinator._etcd_store import EtcdStore
from xpipe.security._tls import TLSConfig

from tests import helpers_tasks as ht
from tests.harness import Cluster, EtcdServer, Proc, SecureSetup, eventually


def test_a_coordinator_runs_on_etcd_over_mutual_tls(tmp_path):
    setup = SecureSetup(tmp_path, principals={"admin": ["admin"]})
    cert, key = setup.cert("client")
    with EtcdServer(tmp_path, tls=setup) as etcd:
        store = ["--store", f"etcd://{etcd.endpoint}", "--etcd-ca", setup.ca, "--etcd-cert", cert, "--etcd-key", key]
        with Cluster(tmp_path / "cluster", workers=1, coordinator_args=store) as cluster:
            p = Pipeline("over-etcd-tls")
            p.add_tasks([Task("one", ht.echo, args=(7,))])
            with PipelineManager(coordinator=cluster.address, connect_timeout_s=10) as pm:
                result = pm.execute_pipeline(p, monitor=False)
            assert result.outputs["one"] == 7
        # Read the run back from etcd over TLS with the store's own client.
        tls = TLSConfig(ca=setup.ca, cert=cert, key=key)
        stored = asyncio.run(_get_run(etcd.endpoint, tmp_path, tls, result.run_id))
        assert stored is not None and stored.header.name == "over-etcd-tls"
        # The same read in plaintext gets nothing from a TLS etcd.
        with pytest.raises(Exception, match="UNAVAILABLE|unavailable|Socket closed"):
            asyncio.run(_get_run(etcd.endpoint, tmp_path, None, result.run_id, call_timeout_s=2.0))


def test_without_the_etcd_flags_the_coordinator_cannot_lead(tmp_path):
    setup = SecureSetup(tmp_path, principals={"admin": ["admin"]})
    with EtcdServer(tmp_path, tls=setup) as etcd:
        argv = [sys.executable, "-m", "xpipe.coordinator", "--listen", "127.0.0.1:0", "--data-dir",
                str(tmp_path / "data"), "--store", f"etcd://{etcd.endpoint}"]  # fmt: skip
        proc = Proc("coordinator", argv, log_dir=tmp_path / "logs", cwd=tmp_path)
        try:
            # Plaintext to a TLS etcd: every campaign fails, and says why in the log.
            eventually(lambda: "UNAVAILABLE" in proc.log_text() or "Socket closed" in proc.log_text(),
                       timeout_s=20, message="the coordinator logs that etcd cannot be reached")  # fmt: skip
            assert "elected leader" not in proc.log_text()
        finally:
            proc.terminate()


async def _get_run(endpoint: str, tmp_path, tls, run_id: str, call_timeout_s: float = 5.0):
    store = EtcdStore([endpoint], cluster="default", artifact_dir=tmp_path / "artifacts", tls=tls,
                      call_timeout_s=call_timeout_s, retry_s=0.0)  # fmt: skip
    await store.open()
    try:
        return await store.get_run(run_id)
    finally:
        await store.close()
