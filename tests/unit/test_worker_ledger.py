"""The worker's own resource ledger: prefetched work starts only when its request is free."""

from xpipe._proto import common_pb2 as pb
from xpipe.worker._state import ResourceLedger, task_request


def test_no_request_means_one_core():
    assert task_request(pb.Resources()) == (1.0, 0, 0, {})


def test_a_request_fits_only_while_its_resources_are_free():
    ledger = ResourceLedger(pb.Resources(cpu_cores=2, memory_bytes=8 << 30, gpu=1))
    gpu_task = task_request(pb.Resources(cpu_cores=1, gpu=1))
    ledger.acquire(gpu_task)
    ledger.acquire(task_request(pb.Resources()))  # the second core
    assert not ledger.fits(gpu_task)  # no free GPU nor cpu
    ledger.release(task_request(pb.Resources()))
    assert not ledger.fits(gpu_task)  # a core is free, the GPU is not
    ledger.release(gpu_task)
    assert ledger.fits(gpu_task)
    ledger.acquire(gpu_task)
    assert ledger.used_gpu == 1 and ledger.used_cpu == 1.0


def test_idle_worker_runs_an_oversized_request_alone():
    ledger = ResourceLedger(pb.Resources(cpu_cores=1))
    big = task_request(pb.Resources(cpu_cores=4))
    assert ledger.fits(big)
    ledger.acquire(big)
    assert not ledger.fits(task_request(pb.Resources()))
    ledger.release(big)
    assert ledger.fits(task_request(pb.Resources()))


def test_custom_resources_are_accounted():
    ledger = ResourceLedger(pb.Resources(cpu_cores=8, custom={"licence": 1}))
    need = task_request(pb.Resources(cpu_cores=1, custom={"licence": 1}))
    ledger.acquire(need)
    assert not ledger.fits(need)
    ledger.release(need)
    assert ledger.used_custom == {}
    assert ledger.fits(need)
