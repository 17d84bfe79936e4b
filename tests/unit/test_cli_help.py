"""Every ``xpipe`` ``--help`` shows the defaults, and the connect timeout is one setting."""

from __future__ import annotations

import argparse

import pytest

from xpipe import Client, PipelineManager
from xpipe._backoff import DEFAULT_CONNECT_TIMEOUT_S
from xpipe._cli import CLI_CONNECT_TIMEOUT_S, build_parser


def _parsers(parser: argparse.ArgumentParser, path: str = "xpipe"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_every_option_with_a_default_says_it_in_its_help():
    checked = 0
    for path, parser in _parsers(build_parser()):
        rendered = _flat(parser.format_help())  # renders without error, defaults expanded
        formatter = parser._get_formatter()
        for action in parser._actions:
            default = action.default
            if not action.option_strings or default in (None, argparse.SUPPRESS) or isinstance(default, bool):
                continue
            helped = _flat(formatter._expand_help(action))
            where = f"{path} {'/'.join(action.option_strings)}"
            assert "default" in helped, f"{where}: help names no default: {helped!r}"
            if action.default != "" and not isinstance(action.default, (list, tuple)):
                assert _shown(action.default) in helped or str(action.default) in helped, f"{where}: {helped!r}"
            assert helped in rendered, where
            checked += 1
    assert checked > 30  # the walk reached the subcommands, theirs included


def test_the_help_of_runs_and_run_say_what_a_user_asked():
    parsers = dict(_parsers(build_parser()))
    limit = next(a for a in parsers["xpipe runs"]._actions if "--limit" in a.option_strings)
    assert limit.help and "20" in _flat(parsers["xpipe runs"]._get_formatter()._expand_help(limit))
    run_help = _flat(parsers["xpipe run"].format_help())
    assert "falls back to the embedded default" in run_help and "--cancel-on-interrupt" in run_help
    assert "xpipe workers" in parsers and "--all" in parsers["xpipe workers"].format_help()
    assert {"text", "dot", "svg"} <= set(next(a for a in parsers["xpipe graph"]._actions if a.dest == "format").choices)


def test_connect_timeout_comes_from_the_flag_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv("XPIPE_CONNECT_TIMEOUT", raising=False)
    assert build_parser().parse_args(["runs"]).connect_timeout_s == CLI_CONNECT_TIMEOUT_S
    assert build_parser().parse_args(["runs", "--connect-timeout", "2.5"]).connect_timeout_s == 2.5
    assert build_parser().parse_args(["runs", "--connect-timeout-s", "none"]).connect_timeout_s is None
    with Client("127.0.0.1:1") as client:
        assert client.connect_timeout_s == DEFAULT_CONNECT_TIMEOUT_S
    monkeypatch.setenv("XPIPE_CONNECT_TIMEOUT", "3")
    assert build_parser().parse_args(["runs"]).connect_timeout_s == 3.0
    with Client("127.0.0.1:1") as client:
        assert client.connect_timeout_s == 3.0
    with Client("127.0.0.1:1", connect_timeout_s=7) as client:  # an argument wins over the environment
        assert client.connect_timeout_s == 7.0
    monkeypatch.setenv("XPIPE_CONNECT_TIMEOUT", "none")
    with Client("127.0.0.1:1") as client:
        assert client.connect_timeout_s is None
    monkeypatch.setenv("XPIPE_CONNECT_TIMEOUT", "-1")
    with pytest.raises(ValueError, match=r"XPIPE_CONNECT_TIMEOUT='-1': expected a number of seconds >= 0 or 'none'"):
        Client("127.0.0.1:1")
    # The manager checks it before it starts anything (here: before the embedded default).
    with pytest.raises(ValueError, match="XPIPE_CONNECT_TIMEOUT='-1'"):
        PipelineManager()
    with pytest.raises(SystemExit, match="XPIPE_CONNECT_TIMEOUT='-1'"):
        build_parser()
