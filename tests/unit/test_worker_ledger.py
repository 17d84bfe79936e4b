"""The worker's own resource ledger: prefetched work waits until its request is free."""

import asyncio

from xpipe._proto import common_pb2 as pb
from xpipe.worker._daemon import ResourceLedger, task_request


def test_no_request_means_one_core():
    assert task_request(pb.Resources()) == (1.0, 0, 0, {})


def test_queued_task_waits_for_free_resources_then_runs():
    async def scenario():
        ledger = ResourceLedger(pb.Resources(cpu_cores=2, memory_bytes=8 << 30, gpu=1))
        gpu_task = task_request(pb.Resources(cpu_cores=1, gpu=1))
        await ledger.acquire(gpu_task)
        await ledger.acquire(task_request(pb.Resources()))  # the second core
        second_gpu = asyncio.create_task(ledger.acquire(gpu_task))
        await asyncio.sleep(0)
        assert not second_gpu.done()  # no free GPU (nor cpu) yet
        await ledger.release(task_request(pb.Resources()))
        await asyncio.sleep(0)
        assert not second_gpu.done()  # a core is free, the GPU is not
        await ledger.release(gpu_task)
        await asyncio.wait_for(second_gpu, timeout=5)
        assert ledger.used_gpu == 1 and ledger.used_cpu == 1.0

    asyncio.run(scenario())


def test_idle_worker_runs_an_oversized_request_alone():
    async def scenario():
        ledger = ResourceLedger(pb.Resources(cpu_cores=1))
        big = task_request(pb.Resources(cpu_cores=4))
        await asyncio.wait_for(ledger.acquire(big), timeout=5)
        waiting = asyncio.create_task(ledger.acquire(task_request(pb.Resources())))
        await asyncio.sleep(0)
        assert not waiting.done()
        await ledger.release(big)
        await asyncio.wait_for(waiting, timeout=5)

    asyncio.run(scenario())


def test_custom_resources_are_accounted():
    async def scenario():
        ledger = ResourceLedger(pb.Resources(cpu_cores=8, custom={"licence": 1}))
        need = task_request(pb.Resources(cpu_cores=1, custom={"licence": 1}))
        await ledger.acquire(need)
        blocked = asyncio.create_task(ledger.acquire(need))
        await asyncio.sleep(0)
        assert not blocked.done()
        await ledger.release(need)
        await asyncio.wait_for(blocked, timeout=5)

    asyncio.run(scenario())
