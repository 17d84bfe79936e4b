"""Code trust with real principals: a secure cluster (mTLS, tokens, a policy) and the SDK.

The submit-time checks (``coordinator/_trust``) and the worker's code gate are tested on
their own in ``test_code_trust.py`` with the local principal; here each refusal comes from
a principal that authenticated with a token, as a real user's would.
"""

from __future__ import annotations

import os

import pytest
from xpipe import Pipeline, PipelineManager, Task, require_permission, task
from xpipe.errors import PermissionDeniedError

from tests import helpers_tasks as ht
from tests.harness import Cluster, SecureSetup

CONNECT_TIMEOUT_S = 5.0
PRINCIPALS = {
    "admin": ["admin"], "worker": ["worker"], "submitter": ["submitter"], "pickler": ["submitter"],
    "analyst": ["submitter"], "runner": ["runner"],
}  # fmt: skip
POLICY = """
[roles.runner]
permissions = ["run:read", "run:submit", "result:read"]
[principals.pickler]
permissions = ["code:pickle"]
[principals.analyst]
permissions = ["code:pickle", "customer_data_read"]
"""


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("code-trust-auth")
    setup = SecureSetup(tmp, principals=PRINCIPALS, policy=POLICY)
    with Cluster(tmp, workers=1, slots=2, security=setup) as cluster:
        yield cluster


def _manager(cluster: Cluster, principal: str) -> PipelineManager:
    return PipelineManager(coordinator=cluster.address, connect_timeout_s=CONNECT_TIMEOUT_S,
                           **cluster.client_options(principal))  # fmt: skip


def _nested_pipeline() -> Pipeline:
    def shout(text):  # nested: sent cloudpickled
        return text.upper()

    p = Pipeline("nested")
    p.add_task(Task("shout", shout, args=("hi",)))
    return p


def test_cloudpickled_code_needs_code_pickle(secure):
    with _manager(secure, "submitter") as pm:
        with pytest.raises(PermissionDeniedError, match=r"'submitter' lacks permission code:pickle.*'shout'"):
            pm.execute_pipeline(_nested_pipeline(), monitor=False)
        assert pm.client.list_runs() == []  # nothing of a refused run is stored
    with _manager(secure, "pickler") as pm:
        assert pm.execute_pipeline(_nested_pipeline(), monitor=False).outputs["shout"] == "HI"


def _customer_pipeline(pm: PipelineManager) -> Pipeline:
    # The seed's enterprise sample, as far as it runs here.
    @pm.pipeline("customer_data_processing")
    def customer_pipeline():
        @task("extract_customer_data")
        @require_permission("customer_data_read")
        def extract_customers():
            return [{"id": 1, "email": "dana@example.org"}]

        @task("count", depends_on=["extract_customer_data"])
        def count(rows):
            return len(rows)

        return [extract_customers, count]

    return customer_pipeline


def test_a_custom_permission_is_required_of_the_submitter(secure):
    with _manager(secure, "pickler") as pm:  # may send pickled code, but lacks customer_data_read
        with pytest.raises(PermissionDeniedError,
                           match=r"lacks permission customer_data_read.*'extract_customer_data'"):  # fmt: skip
            pm.execute_pipeline(_customer_pipeline(pm), monitor=False)
    with _manager(secure, "analyst") as pm:
        assert pm.execute_pipeline(_customer_pipeline(pm), monitor=False).outputs["count"] == 1


def test_command_tasks_need_code_command(secure):
    p = Pipeline("cmd")
    p.add_task(Task.command("hello", ["echo", "hello"]))
    with _manager(secure, "runner") as pm:  # run:submit without code:command
        with pytest.raises(PermissionDeniedError, match=r"'runner' lacks permission code:command.*'hello'"):
            pm.execute_pipeline(p, monitor=False)
    with _manager(secure, "submitter") as pm:
        assert "hello" in pm.execute_pipeline(p, monitor=False).outputs["hello"]["stdout"]


class _Hostile:
    """An argument whose unpickling would create a file (pickle calls what __reduce__ names)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_arguments_of_a_submitter_without_code_pickle_are_plain_values_only(secure, tmp_path):
    marker = tmp_path / "pwned"
    p = Pipeline("args")
    p.add_tasks([Task("plain", ht.echo, args=({"a": [1, 2.5, "x"]},)),
                 Task("hostile", ht.echo, args=(_Hostile(str(marker)),))])  # fmt: skip
    with _manager(secure, "submitter") as pm:  # importable functions: no code:pickle needed
        result = pm.execute_pipeline(p, monitor=False, raise_on_failure=False)
    assert result.outputs["plain"] == {"a": [1, 2.5, "x"]}
    hostile = result.tasks["hostile"]
    assert hostile.status == "failed" and hostile.error_type == "SERIALIZATION", hostile
    assert "refused to load io.open: without code:pickle" in hostile.error, hostile.error
    assert not os.path.exists(marker)  # refused before anything ran
