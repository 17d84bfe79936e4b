"""Client and PipelineManager timeouts: bad values are refused by name, before any call."""

from __future__ import annotations

import pytest

from tests.harness import assert_no_leaks
from xpipe import Client, PipelineManager
from xpipe._backoff import DEFAULT_CONNECT_TIMEOUT_S

# Nothing listens here, and nothing below connects: every check happens before a call.
ADDRESS = "127.0.0.1:1"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1, "30", True])
def test_bad_connect_timeout_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"connect_timeout_s must be a finite number of seconds >= 0 \(None waits"):
        Client(ADDRESS, connect_timeout_s=bad)
    with pytest.raises(ValueError, match="connect_timeout_s must be"):
        PipelineManager(coordinator=ADDRESS, connect_timeout_s=bad)


def test_connect_timeout_defaults_to_the_documented_30s_and_none_waits_for_ever():
    assert DEFAULT_CONNECT_TIMEOUT_S == 30.0
    with Client(ADDRESS) as client:
        assert client.connect_timeout_s == 30.0
    with PipelineManager(coordinator=ADDRESS, connect_timeout_s=None) as pm:
        assert pm.client.connect_timeout_s is None
    with PipelineManager({"coordinator": ADDRESS, "connect_timeout_s": 5}) as pm:
        assert pm.client.connect_timeout_s == 5.0


def test_call_timeout_has_no_for_ever():
    with pytest.raises(ValueError, match=r"call_timeout_s must be a finite number of seconds >= 0, got None"):
        Client(ADDRESS, call_timeout_s=None)


def test_watch_timeout_is_checked_when_called_not_when_iterated():
    with Client(ADDRESS) as client:
        with pytest.raises(ValueError, match="timeout_s must be a finite number of seconds >= 0"):
            client.watch("some-run", timeout_s=float("nan"))
        with pytest.raises(ValueError, match="timeout_s must be"):
            client.watch("some-run", timeout_s=-2)


def test_a_bad_connect_timeout_starts_no_embedded_cluster(monkeypatch):
    monkeypatch.delenv("XPIPE_COORDINATOR", raising=False)
    before = assert_no_leaks()
    with pytest.raises(ValueError, match="connect_timeout_s must be"):
        PipelineManager(connect_timeout_s=float("nan"))
    assert not assert_no_leaks(ignore=before), "a coordinator or worker was started"
