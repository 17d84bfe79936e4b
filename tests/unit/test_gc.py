"""The coordinator's garbage-collector threshold (``--gc-threshold``) and its pause clock."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
from xpipe.coordinator._gc import GC_YOUNG_THRESHOLD, GcPauses, set_young_threshold
from xpipe.coordinator._main import build_parser


@pytest.fixture
def restored_threshold():
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_the_young_threshold_is_set_and_the_older_ones_kept(restored_threshold):
    gc.set_threshold(700, 11, 12)
    set_young_threshold(GC_YOUNG_THRESHOLD)
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 11, 12)
    assert build_parser().parse_args([]).gc_threshold == GC_YOUNG_THRESHOLD


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "700"])
def test_a_threshold_that_would_stop_the_collector_or_is_not_whole_is_refused(bad, restored_threshold):
    before = gc.get_threshold()
    with pytest.raises(ValueError, match=r"--gc-threshold must be a whole number of at least 1 .*not "):
        set_young_threshold(bad)
    assert gc.get_threshold() == before


def test_pauses_are_timed_per_generation_until_uninstalled():
    pauses = GcPauses().install()
    try:
        pauses.install()  # once only
        assert gc.callbacks.count(pauses._on_collect) == 1
        gc.collect(1)
        gc.collect(2)
        assert pauses.collections[1] >= 1 and pauses.collections[2] >= 1
        assert pauses.seconds[1] > 0 and pauses.seconds[2] > 0
    finally:
        pauses.uninstall()
    counted = list(pauses.collections)
    gc.collect(2)
    assert pauses.collections == counted
    assert pauses._on_collect not in gc.callbacks


def test_the_coordinator_refuses_a_bad_threshold_at_start_naming_the_flag(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "xpipe.coordinator", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
         "--gc-threshold", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "xpipe-coordinator: --gc-threshold must be a whole number of at least 1" in proc.stderr
    assert not (tmp_path / "xpipe.db").exists()  # refused before the store was opened (it would be here)
