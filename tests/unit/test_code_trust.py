"""Code trust: submit-time checks, signed run principals, the worker's gate, plain-only unpickling."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from xpipe import _codec
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.coordinator._caller import LOCAL
from xpipe.coordinator._engine import assignment_bytes
from xpipe.coordinator._events import Assign
from xpipe.coordinator._entries import RunEntry
from xpipe.coordinator._trust import RunSigner, check_submission, code_grants
from xpipe.security._codetrust import PrincipalVerifier, code_kind, parse_allowed_code, restricted_loads
from xpipe.security._principal import Principal
from xpipe.security._rbac import DEFAULT_POLICY, Policy
from xpipe.worker._codegate import CodeGate, Refused
from xpipe.worker._runtask import run_assignment

SUBMITTER = Principal.build("sam", roles=["submitter"])
VIEWER = Principal.build("vic", roles=["viewer"])
PICKLER = Principal.build("pia", roles=["submitter"], permissions=["code:pickle"])
DANA = Principal.build("dana", roles=["submitter"], permissions=["customer_data_read"], namespaces=["default"])


def spec_with(*tasks: pb.TaskSpec, namespace: str = "") -> pb.PipelineSpec:
    return pb.PipelineSpec(name="p", tasks=tasks, namespace=namespace)


def imported(name: str = "t", **kw) -> pb.TaskSpec:
    return pb.TaskSpec(name=name, python=pb.PythonCall(import_path="tests.helpers_tasks:noop"), **kw)


def pickled(name: str = "t") -> pb.TaskSpec:
    return pb.TaskSpec(name=name, python=pb.PythonCall(code_hash="ab" * 32))


def command(name: str = "t") -> pb.TaskSpec:
    return pb.TaskSpec(name=name, command=pb.CommandCall(argv=["true"]))


def handler(name: str = "t") -> pb.TaskSpec:
    return pb.TaskSpec(name=name, handler=pb.HandlerCall(name="h"))


# ---- check_submission ---------------------------------------------------------------


def test_importable_functions_and_handlers_need_nothing_extra() -> None:
    for who in (SUBMITTER, VIEWER, LOCAL):
        assert check_submission(spec_with(imported("a"), handler("b")), who, DEFAULT_POLICY) is None


def test_pickled_code_needs_code_pickle_and_the_refusal_names_it_and_the_task() -> None:
    refusal = check_submission(spec_with(imported("a"), pickled("train")), SUBMITTER, DEFAULT_POLICY)
    assert refusal is not None and refusal.code == "PERMISSION_DENIED"
    assert "code:pickle" in refusal.message and "'train'" in refusal.message and "'sam'" in refusal.message
    assert check_submission(spec_with(pickled()), PICKLER, DEFAULT_POLICY) is None
    assert check_submission(spec_with(pickled()), LOCAL, DEFAULT_POLICY) is None  # admin holds everything


def test_commands_need_code_command() -> None:
    refusal = check_submission(spec_with(command("sh")), VIEWER, DEFAULT_POLICY)
    assert refusal is not None and "code:command" in refusal.message and "'sh'" in refusal.message
    assert check_submission(spec_with(command()), SUBMITTER, DEFAULT_POLICY) is None


def test_a_pickled_recovery_handler_or_stray_code_needs_code_pickle() -> None:
    spec = spec_with(imported())
    spec.recovery_handler.code_hash = "cd" * 32
    refusal = check_submission(spec, SUBMITTER, DEFAULT_POLICY)
    assert refusal is not None and "code:pickle" in refusal.message and "recovery handler" in refusal.message
    spec = spec_with(imported())
    spec.code.add(code_hash="ef" * 32, data=b"x")
    refusal = check_submission(spec, SUBMITTER, DEFAULT_POLICY)
    assert refusal is not None and "code:pickle" in refusal.message
    spec.recovery_handler.import_path = "tests.helpers_tasks:noop"
    assert check_submission(spec, PICKLER, DEFAULT_POLICY) is None


def test_required_permissions_are_checked_in_the_runs_namespace() -> None:
    task = imported("extract_customer_data", required_permissions=["customer_data_read"])
    refusal = check_submission(spec_with(task), SUBMITTER, DEFAULT_POLICY)
    assert refusal is not None and refusal.code == "PERMISSION_DENIED"
    assert "customer_data_read" in refusal.message and "'extract_customer_data'" in refusal.message
    assert check_submission(spec_with(task), DANA, DEFAULT_POLICY) is None
    refusal = check_submission(spec_with(task, namespace="finance"), DANA, DEFAULT_POLICY)
    assert refusal is not None and "'finance'" in refusal.message


def test_a_policy_grant_and_an_unauthenticated_caller() -> None:
    policy = Policy.from_dict({"principals": {"sam": {"permissions": ["customer_data_read", "code:pickle"]}}})
    task = imported(required_permissions=["customer_data_read"])
    assert check_submission(spec_with(task, pickled("p")), SUBMITTER, policy) is None
    refusal = check_submission(spec_with(command()), None, DEFAULT_POLICY)
    assert refusal is not None and refusal.code == "UNAUTHENTICATED"


def test_code_grants_are_the_code_permissions_held() -> None:
    assert code_grants(LOCAL, "default", DEFAULT_POLICY) == ("code:pickle", "code:command")
    assert code_grants(SUBMITTER, "default", DEFAULT_POLICY) == ("code:command",)
    assert code_grants(VIEWER, "default", DEFAULT_POLICY) == ()
    assert code_grants(DANA, "elsewhere", DEFAULT_POLICY) == ()


def test_code_kinds() -> None:
    assert [code_kind(t) for t in (imported(), pickled(), command(), handler())] == ["import", "pickle", "command", "handler"]
    both = pb.TaskSpec(name="t", python=pb.PythonCall(import_path="m:f", code_hash="ab"))
    assert code_kind(both) == "pickle"  # what the worker would load
    assert parse_allowed_code("import, handler") == {"import", "handler"}
    with pytest.raises(ValueError, match="unknown kind 'pickles'"):
        parse_allowed_code("import,pickles")
    with pytest.raises(ValueError, match="lists no kind"):
        parse_allowed_code(" , ")


# ---- signing and verifying ----------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> RunSigner:
    return RunSigner.generate()


def verifier_of(signer: RunSigner) -> PrincipalVerifier:
    return PrincipalVerifier(signer.public_key, signer.key_id)


def test_a_signed_principal_verifies_and_is_cached(signer: RunSigner) -> None:
    principal = signer.sign("sam", ("code:command",), "run1")
    verifier = verifier_of(signer)
    assert verifier.grants(principal, "run1") == {"code:command"}
    assert verifier.grants(principal, "run1") == {"code:command"}  # from the cache
    # A copy with other grants but the same (cached) signature still gets the signed grants.
    forged = pb.RunPrincipal()
    forged.CopyFrom(principal)
    forged.grants.append("code:pickle")
    assert verifier.grants(forged, "run1") == {"code:command"}


@pytest.mark.parametrize("tamper", ["name", "grants", "unsigned", "key_id"])
def test_a_tampered_or_misplaced_principal_is_refused(signer: RunSigner, tamper: str) -> None:
    principal = signer.sign("sam", ("code:command",), "run1")
    run_id = "run1"
    if tamper == "name":
        principal.name = "local"
    elif tamper == "grants":
        principal.grants.append("code:pickle")
    elif tamper == "unsigned":
        principal.ClearField("signature")
    elif tamper == "key_id":
        principal.key_id = "0" * 16
    with pytest.raises(PermissionError) as info:
        verifier_of(signer).grants(principal, run_id)
    assert run_id in str(info.value)


def test_a_principal_signed_by_another_key_is_refused(signer: RunSigner) -> None:
    other = RunSigner.generate()
    with pytest.raises(PermissionError, match="signed with key"):
        verifier_of(signer).grants(other.sign("sam", (), "run1"), "run1")
    # Even claiming our key id, the signature does not verify.
    forged = other.sign("sam", (), "run1")
    forged.key_id = signer.key_id
    with pytest.raises(PermissionError, match="bad signature"):
        verifier_of(signer).grants(forged, "run1")


def test_signing_key_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "signing.pem"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    os.chmod(path, 0o600)
    a, b = RunSigner.load(path), RunSigner.load(path)
    assert a.key_id == b.key_id and a.public_key == b.public_key  # HA coordinators share it
    verifier_of(b).grants(a.sign("x", (), "r"), "r")
    with pytest.raises(ValueError, match="cannot read it"):
        RunSigner.load(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ValueError, match="junk.pem: not an unencrypted PEM"):
        RunSigner.load(tmp_path / "junk.pem")


def test_a_restored_run_is_signed_again_by_a_new_key(signer: RunSigner) -> None:
    spec = spec_with(imported())
    spec.principal.CopyFrom(RunSigner.generate().sign("sam", ("code:command",), "run1"))
    signer.resign(spec, "run1")
    assert verifier_of(signer).grants(spec.principal, "run1") == {"code:command"}
    assert spec.principal.name == "sam"


def test_every_assignment_of_a_run_carries_the_principal_encoded_once(signer: RunSigner) -> None:
    spec = spec_with(imported("a"), imported("b"))
    spec.principal.CopyFrom(signer.sign("sam", ("code:command",), "run1"))
    run = RunEntry("run1", spec, 0.0)
    for name in ("a", "b"):
        action = Assign("w1", ("run1", name, 1), run.tasks[name].spec, (), principal=run.principal)
        encoded = assignment_bytes(action)
        head = worker_pb2.AssignmentHead.FromString(encoded)
        full = worker_pb2.Assignment.FromString(encoded)
        assert head.principal == full.principal == spec.principal
        assert full.task.name == name
    assert RunEntry("run2", spec_with(imported()), 0.0).principal == b""  # unsigned: nothing appended


# ---- the worker's gate ---------------------------------------------------------------


def head_of(task: pb.TaskSpec, principal: pb.RunPrincipal | None, run_id: str = "run1") -> worker_pb2.AssignmentHead:
    """What the worker's parent reads, from the bytes the coordinator sends."""
    a = worker_pb2.Assignment(attempt=worker_pb2.AttemptRef(run_id=run_id, task=task.name, attempt=1), task=task)
    if principal is not None:
        a.principal.CopyFrom(principal)
    return worker_pb2.AssignmentHead.FromString(a.SerializeToString())


def test_gate_passes_signed_assignments_whose_grants_cover_their_kind(signer: RunSigner) -> None:
    gate = CodeGate()
    gate.trust(signer.public_key, signer.key_id)
    gate.check(head_of(pickled(), signer.sign("local", ("code:pickle", "code:command"), "run1")))
    gate.check(head_of(imported(), signer.sign("sam", (), "run1")))
    with pytest.raises(Refused) as info:
        gate.check(head_of(pickled("p"), signer.sign("sam", ("code:command",), "run1")))
    assert info.value.error_type == "PICKLED_CODE_REFUSED" and "not granted code:pickle" in str(info.value)
    with pytest.raises(Refused, match="not granted code:command"):
        gate.check(head_of(command(), signer.sign("vic", (), "run1")))


def test_gate_refuses_unsigned_foreign_and_tampered_assignments(signer: RunSigner) -> None:
    gate = CodeGate()
    with pytest.raises(Refused, match="holds no coordinator signing key"):
        gate.check(head_of(imported(), signer.sign("sam", (), "run1")))
    gate.trust(signer.public_key, signer.key_id)
    with pytest.raises(Refused, match="carries no signed principal"):
        gate.check(head_of(imported(), None))
    with pytest.raises(Refused, match="signed with key"):
        gate.check(head_of(imported(), RunSigner.generate().sign("local", ("code:pickle",), "run1")))
    tampered = signer.sign("sam", ("code:command",), "run1")
    tampered.grants.append("code:pickle")
    with pytest.raises(Refused, match="bad signature"):
        gate.check(head_of(pickled(), tampered))


def test_gate_refuses_kinds_the_worker_does_not_allow(signer: RunSigner) -> None:
    gate = CodeGate(parse_allowed_code("import,handler"))
    gate.trust(signer.public_key, signer.key_id)
    admin = signer.sign("local", ("code:pickle", "code:command"), "run1")
    gate.check(head_of(handler(), admin))
    with pytest.raises(Refused) as info:
        gate.check(head_of(pickled(), admin))
    assert info.value.error_type == "PICKLED_CODE_REFUSED" and "--allow-code import,handler" in str(info.value)
    with pytest.raises(Refused, match="runs command code, which this worker refuses"):
        gate.check(head_of(command(), admin))


# ---- pickled arguments without code:pickle ------------------------------------------


class _Touch:
    """Unpickling this creates a file: what a hostile ``__reduce__`` could do instead."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_restricted_loads_builds_plain_values_only(tmp_path: Path) -> None:
    import datetime
    import decimal

    plain = ((1, 2.5, 3j, "s", b"b", bytearray(b"x"), None, True), {"k": [{1, 2}, frozenset({3}), range(3)]},
             datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc), decimal.Decimal("1.5"))  # fmt: skip
    assert restricted_loads(pickle.dumps(plain)) == plain
    marker = tmp_path / "ran"
    with pytest.raises(pickle.UnpicklingError, match="refused to load pathlib.*code:pickle"):
        restricted_loads(pickle.dumps(_Touch(str(marker))))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="refused to load (posix|os).system"):
        restricted_loads(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    assert not marker.exists()


def _assignment_with_args(args: object, grants: tuple[str, ...] | None, marker_dir: Path) -> worker_pb2.Assignment:
    a = worker_pb2.Assignment(attempt=worker_pb2.AttemptRef(run_id="run1", task="t", attempt=1))
    a.task.name = "t"
    a.task.python.import_path = "tests.helpers_tasks:describe"
    a.task.args.CopyFrom(_codec.encode(args, "pickle"))
    if grants is not None:
        a.principal.CopyFrom(pb.RunPrincipal(name="sam", grants=grants, run_id="run1"))
    return a


def test_a_hostile_argument_is_refused_not_run_without_code_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    event = run_assignment(_assignment_with_args(((_Touch(str(marker)),), {}), ("code:command",), tmp_path), None, {})
    assert event.WhichOneof("kind") == "failed"
    error = event.failed.error
    assert error.error_type == "SERIALIZATION" and error.non_retryable
    assert "arguments of task 't'" in error.message and "refused to load pathlib" in error.message
    assert not marker.exists()
    # Plain arguments still reach the function.
    event = run_assignment(_assignment_with_args(((1, "a"), {"k": [2]}), ("code:command",), tmp_path), None, {})
    assert event.WhichOneof("kind") == "succeeded", event


def test_with_code_pickle_arguments_unpickle_as_before(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    event = run_assignment(_assignment_with_args(((_Touch(str(marker)),), {}), ("code:pickle",), tmp_path), None, {})
    assert marker.exists()  # a holder of code:pickle may run any code, by design
    assert event.WhichOneof("kind") == "succeeded", event


# ---- @require_permission ----------------------------------------------------------------


def _task_spec(pipe, name: str) -> pb.TaskSpec:
    return next(t for t in pipe.to_proto().tasks if t.name == name)


def test_require_permission_on_a_function_under_task_as_the_seed_stacks_it() -> None:
    from xpipe import pipeline, require_permission, task
    from xpipe.security._marks import mark

    def log_data_access(func):  # stands for the audit helper's decorator: any other mark
        return mark(func, audit_data_access=True)

    @pipeline("customers")
    def customers():
        @task("extract_customer_data")
        @require_permission("customer_data_read")
        @log_data_access
        def extract_customers():
            return [1]

        @task("anonymize_pii", depends_on=["extract_customer_data"])
        def anonymize(rows):
            return rows

        return [extract_customers, anonymize]

    spec = _task_spec(customers, "extract_customer_data")
    assert list(spec.required_permissions) == ["customer_data_read"] and spec.audit_data_access
    assert list(_task_spec(customers, "anonymize_pii").required_permissions) == []
    refusal = check_submission(customers.to_proto(), SUBMITTER, DEFAULT_POLICY)
    assert refusal is not None and "customer_data_read" in refusal.message
    # Functions defined inside the pipeline are cloudpickled: dana also needs code:pickle.
    refusal = check_submission(customers.to_proto(), DANA, DEFAULT_POLICY)
    assert refusal is not None and "code:pickle" in refusal.message
    dana_pickles = Principal.build("dana", roles=["submitter"], permissions=["customer_data_read", "code:pickle"])
    assert check_submission(customers.to_proto(), dana_pickles, DEFAULT_POLICY) is None


def test_require_permission_on_a_task_and_stacked_twice() -> None:
    from xpipe import Pipeline, Task, require_permission, task

    @require_permission("audit_read")
    @task("t")
    @require_permission("customer_data_read", "pii_read")
    def t():
        return 1

    from tests.helpers_tasks import noop

    plain = require_permission("billing")(Task("u", noop))
    pipe = Pipeline("p")
    pipe.add_tasks([t, plain])
    assert list(_task_spec(pipe, "t").required_permissions) == ["audit_read", "customer_data_read", "pii_read"]
    assert list(_task_spec(pipe, "u").required_permissions) == ["billing"]


def test_require_permission_refuses_bad_names_and_bare_use() -> None:
    from xpipe import require_permission

    with pytest.raises(ValueError, match="invalid permission 'customer data'"):
        require_permission("customer data")
    with pytest.raises(ValueError, match="at least one permission"):
        require_permission()
    with pytest.raises(TypeError, match="needs a permission name.*'f' bare"):

        @require_permission
        def f():
            return None


def test_a_principal_is_signed_once_and_verified_once_for_all_its_runs(signer: RunSigner) -> None:
    """Signing and verifying cost ~60 and ~190 µs: per principal, never per run."""
    first, second = signer.sign("sam", ("code:command",), "run1"), signer.sign("sam", ("code:command",), "run2")
    assert first.signature == second.signature and (first.run_id, second.run_id) == ("run1", "run2")
    assert signer.sign("sam", ("code:pickle",), "run3").signature != first.signature  # other grants
    verifier = verifier_of(signer)
    assert verifier.grants(first, "run1") == {"code:command"}
    verifier._key = None  # a second verification would now fail: the cache must answer
    assert verifier.grants(second, "run2") == {"code:command"}
