"""Dashboard logins: opaque session ids, expiry, the cap, logout."""

from __future__ import annotations

from xpipe.coordinator._web import _app
from xpipe.coordinator._web._app import WebServer


def test_a_session_stands_for_its_credential_until_closed():
    server = WebServer(None, "127.0.0.1:0")  # type: ignore[arg-type]
    session = server.open_session("alice:secret")
    assert "secret" not in session and len(session) >= 40
    assert server.session_credential(session) == "alice:secret"
    assert server.session_credential("forged") is None
    server.close_session(session)
    assert server.session_credential(session) is None


def test_an_expired_session_is_gone(monkeypatch):
    server = WebServer(None, "127.0.0.1:0")  # type: ignore[arg-type]
    monkeypatch.setattr(_app, "SESSION_TTL_S", -1.0)
    session = server.open_session("xpt_token")
    assert server.session_credential(session) is None


def test_past_the_cap_the_oldest_session_ends_first(monkeypatch):
    server = WebServer(None, "127.0.0.1:0")  # type: ignore[arg-type]
    monkeypatch.setattr(_app, "MAX_SESSIONS", 3)
    sessions = [server.open_session(f"token-{i}") for i in range(5)]
    assert [server.session_credential(s) for s in sessions] == [None, None, "token-2", "token-3", "token-4"]
