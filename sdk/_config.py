"""One config file (TOML) and ``XPIPE_*`` variables for ``xpipe-coordinator``, ``xpipe-worker`` and ``xpipe``.

An operator configures every binary the same way, and a flag added later needs no code
here: the settings are derived from each binary's own argparse parser. Every long option
``--some-flag`` has

* the key ``some_flag`` in the binary's table of the file given by ``--config FILE`` (or
  ``$XPIPE_CONFIG``): ``[coordinator]``, ``[worker]`` or ``[client]``. A sub-table adds its
  name in front: ``[coordinator.autoscale] provider = "local"`` is ``--autoscale-provider``;
* the environment variable ``XPIPE_SOME_FLAG``.

Precedence: flags > environment > file > the parser's defaults. The layers below the flags
become the parser's defaults before it parses, so ``--help`` shows them and the flags win
the normal argparse way. Values are checked against the option: its ``type`` (``int``,
``float``, a path...), its ``choices``, booleans for ``store_true``; an option named in
seconds (``*_s``) also takes a duration such as ``"5min"``, one named in bytes (``*_bytes``,
or metavar ``SIZE``) a size such as ``"2GiB"``. A bad key, type or value raises
:class:`ConfigError` naming the key, the table and the file.

Exceptions to the environment rule (the variable exists with another meaning):

* ``xpipe-coordinator --tls-ca/--tls-cert/--tls-key``: ``XPIPE_TLS_*`` are a *client's*
  TLS files (the SDK reads them; a worker exports its own to its tasks), so the
  coordinator's server certificate comes only from a flag or the file.
* ``xpipe-worker --worker-id``: a worker exports ``XPIPE_WORKER_ID`` to its tasks; a worker
  started from a task must not take its parent's id.

For ``xpipe``, only the options every subcommand shares (``--coordinator``, ``--token``,
TLS, ``--connect-timeout``...) are settings; a subcommand's own options describe one
invocation and are flags only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._limits import parse_quantity
from ._retry import parse_duration_s

__all__ = [
    "CONFIG_ENV", "ENV_PREFIX", "TABLES", "ConfigError", "Option", "Setting", "Resolution", "add_config_argument",
    "options_of", "resolve", "parse_args", "register_command",
]  # fmt: skip

#: Prefix of every setting's environment variable.
ENV_PREFIX = "XPIPE_"
#: Where the config file's path comes from when ``--config`` is not given.
CONFIG_ENV = "XPIPE_CONFIG"
#: The table each binary reads (the key of ``--for`` in ``xpipe config show``).
TABLES: dict[str, str] = {"coordinator": "xpipe-coordinator", "worker": "xpipe-worker", "client": "xpipe"}
#: Settings of a binary that no environment variable sets (see the module docstring).
ENV_EXCEPTIONS: dict[str, frozenset[str]] = {
    "coordinator": frozenset({"tls_ca", "tls_cert", "tls_key"}),
    "worker": frozenset({"worker_id"}),
    "client": frozenset(),
}
#: Values of these keys are shown masked by ``xpipe config show``.
SECRET_KEY_RE = re.compile(r"token|secret|password")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


class ConfigError(ValueError):
    """A config file or ``XPIPE_*`` variable that cannot be used; the message is one line naming it."""


@dataclass(frozen=True, slots=True)
class Option:
    """One configurable flag of a parser."""

    #: The argparse action: its dest, type, choices, nargs and kind drive conversion.
    action: argparse.Action
    #: File keys, from each long option string (``--connect-timeout`` -> ``connect_timeout``); the first is canonical.
    keys: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.keys[0]

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def env_names(self) -> tuple[str, ...]:
        return tuple(ENV_PREFIX + k.upper() for k in self.keys)

    @property
    def is_bool(self) -> bool:
        return self.action.nargs == 0 and not isinstance(self.action, argparse._CountAction)

    @property
    def is_list(self) -> bool:
        return isinstance(self.action, (argparse._AppendAction, argparse._ExtendAction)) or self.action.nargs in (
            "*", "+") or isinstance(self.action.nargs, int) and self.action.nargs > 0  # fmt: skip

    @property
    def is_duration(self) -> bool:
        """Seconds, by the unit in its name: a duration string is also accepted."""
        return self.key.endswith("_s") or self.action.dest.endswith("_s")

    @property
    def is_size(self) -> bool:
        """Bytes, by the unit in its name or its metavar: a size string is also accepted."""
        return self.key.endswith("_bytes") or self.action.dest.endswith("_bytes") or self.action.metavar == "SIZE"


@dataclass(frozen=True, slots=True)
class Setting:
    """The effective value of one option and where it came from."""

    option: Option
    value: Any
    #: "flag --x", "env XPIPE_X", "file PATH:LINE" or "default".
    source: str


@dataclass(slots=True)
class Resolution:
    """What :func:`resolve` found: the file, and the values the environment and file set."""

    table: str
    path: Path | None
    #: The parser whose options are the settings (``xpipe``: the options its subcommands share).
    options_parser: argparse.ArgumentParser
    options: list[Option]
    #: dest -> (value, source) for the options set by the environment or the file.
    layered: dict[str, tuple[Any, str]] = field(default_factory=dict)


class _FromConfig(list):
    """A list default from the file or environment that a flag replaces instead of extending.

    argparse's ``append`` copies the default before adding to it; this copy is empty, so
    ``--import x`` on the command line replaces ``import = [...]`` of the file (flags win).
    """

    def __copy__(self) -> list:
        return []


class _Unset:
    """Marks an option no flag gave, in :func:`given_flags`' probe; copies to [] for append."""

    def __copy__(self) -> list:
        return []


_UNSET = _Unset()


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, the same on every binary."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"settings file (TOML): each --some-flag is the key some_flag in this binary's table "
                             f"({', '.join(f'[{t}]' for t in TABLES)}) and also the variable {ENV_PREFIX}SOME_FLAG; "
                             f"flags win over variables, variables over the file (default: ${CONFIG_ENV}; "
                             f"docs/user-guide.md)")  # fmt: skip


def options_of(parser: argparse.ArgumentParser) -> list[Option]:
    """The parser's configurable options: every long option but ``--config``, help and subcommands."""
    found = []
    for action in parser._actions:
        if isinstance(action, _SKIPPED_ACTIONS) or not action.option_strings or action.dest == "config":
            continue
        keys = tuple(s[2:].replace("-", "_") for s in action.option_strings if s.startswith("--"))
        if keys:
            found.append(Option(action, keys))
    return found


def _config_path(argv: Sequence[str], environ: Mapping[str, str], prog: str) -> Path | None:
    probe = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    probe.add_argument("--config", default=None)
    known, _ = probe.parse_known_args(list(argv))
    text = known.config if known.config is not None else environ.get(CONFIG_ENV, "")
    return Path(text) if text else None


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """``(table..., key) -> line`` for ``key = value`` lines: where ``config show`` says a value came from.

    tomllib keeps no positions; this scan covers ``[a.b]`` headers and plain keys, which is
    what a settings file holds (others are shown without a line).
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = re.fullmatch(r"\s*\[\s*([A-Za-z0-9_.\s\"-]+?)\s*\]\s*(#.*)?", line)
        if header:
            table = tuple(p.strip().strip('"') for p in header.group(1).split("."))
            continue
        key = re.match(r"\s*([A-Za-z0-9_.\s-]+?)\s*=", line)  # a dotted key too: autoscale.provider = ...
        if key:
            lines.setdefault((*table, *(p.strip() for p in key.group(1).split("."))), number)
    return lines


def _load_file(path: Path, table: str) -> dict[str, tuple[Any, str, str]]:
    """The binary's table, flattened (``autoscale.provider`` -> ``autoscale_provider``).

    Returns:
        name -> (value, what to call it in an error, ``PATH:LINE``).
    """
    import tomllib  # only when a file is given: the command's start-up stays as it was

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r}: not UTF-8 text ({exc.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(TABLES))
    if unknown:
        raise ConfigError(f"config file {str(path)!r}: unknown key or table {unknown[0]!r} at the top level; "
                          f"settings go in the tables {', '.join(f'[{t}]' for t in TABLES)}")  # fmt: skip
    lines = _key_lines(text)
    flat: dict[str, tuple[Any, str, str]] = {}

    def walk(node: Any, parts: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            raise ConfigError(f"config file {str(path)!r}: [{'.'.join(parts)}] must be a table, got {node!r:.80}")
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, (*parts, key))
                continue
            name = "_".join((*parts[1:], key))
            line = lines.get((*parts, key))
            place = f"{path}:{line}" if line else str(path)
            where = f"key {key!r} in [{'.'.join(parts)}] of {place}"
            if name in flat:
                raise ConfigError(f"config file {str(path)!r}: {name!r} is set twice in [{table}] "
                                  f"(as a key and in a sub-table)")  # fmt: skip
            flat[name] = (value, where, place)

    if table in data:
        walk(data[table], (table,))
    return flat


def _bool(raw: Any, where: str, *, text: bool) -> bool:
    if text:
        word = str(raw).strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ConfigError(f"{where}: expected a boolean (true/false, 1/0, yes/no, on/off), got {raw!r:.80}")
    if not isinstance(raw, bool):
        raise ConfigError(f"{where}: expected a boolean (true or false), got {type(raw).__name__} {raw!r:.80}")
    return raw


def _scalar(option: Option, raw: Any, where: str, *, text: bool) -> Any:
    """One value of ``option`` from an env string (``text``) or a TOML value, checked."""
    kind = option.action.type
    if not text and isinstance(raw, (dict, list)):
        raise ConfigError(f"{where}: expected one value, got {type(raw).__name__} {raw!r:.80}")
    if not text and isinstance(raw, bool):
        raise ConfigError(f"{where}: expected {_type_name(option)}, got the boolean {str(raw).lower()}")
    try:
        if option.is_duration and kind in (None, int, float) and isinstance(raw, (str, int, float)):
            seconds = parse_duration_s(raw.strip() if isinstance(raw, str) else raw)
            value: Any = seconds if kind is not int else _whole(seconds, where)
        elif option.is_duration and isinstance(raw, str):
            try:  # the flag's own parser first: it may take words (connect timeout 'none')
                value = kind(raw)
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                value = kind(str(parse_duration_s(raw.strip())))
        elif option.is_size and isinstance(raw, (str, int, float)):
            size = parse_quantity(raw.strip()) if isinstance(raw, str) else float(raw)
            if not 0 <= size < float("inf"):
                raise ValueError(f"a size must be >= 0 bytes, got {raw!r:.80}")
            value = int(size) if kind is int else (raw if isinstance(raw, str) else str(int(size)))
        elif text:
            value = kind(raw) if kind is not None else raw
        elif kind in (None, str) or isinstance(kind, type) and issubclass(kind, os.PathLike | str):
            if not isinstance(raw, str):
                raise ConfigError(f"{where}: expected {_type_name(option)}, got {type(raw).__name__} {raw!r:.80}")
            value = kind(raw) if kind is not None else raw
        elif kind is int:
            if not isinstance(raw, int):
                raise ConfigError(f"{where}: expected an integer, got {type(raw).__name__} {raw!r:.80}")
            value = raw
        elif kind is float:
            if not isinstance(raw, (int, float)):
                raise ConfigError(f"{where}: expected a number, got {type(raw).__name__} {raw!r:.80}")
            value = float(raw)
        else:  # the flag's own converter takes text, as on the command line
            value = kind(raw if isinstance(raw, str) else str(raw))
    except ConfigError:
        raise
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        what = "a duration" if option.is_duration else "a size" if option.is_size else _type_name(option)
        raise ConfigError(f"{where}: expected {what}, got {raw!r:.80} ({exc})") from None
    choices = option.action.choices
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r:.80} is not one of {', '.join(map(str, choices))}")
    return value


def _whole(seconds: float, where: str) -> int:
    if seconds != int(seconds):
        raise ConfigError(f"{where}: expected a whole number of seconds, got {seconds:g}")
    return int(seconds)


def _type_name(option: Option) -> str:
    kind = option.action.type
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is None or kind is str:
        return "a string"
    if isinstance(kind, type) and issubclass(kind, os.PathLike):
        return "a path (string)"
    return f"a value for {option.flag}"


def _convert(option: Option, raw: Any, where: str, *, text: bool) -> Any:
    """The value ``option``'s dest gets from ``raw`` (an env string when ``text``, else TOML)."""
    action = option.action
    if option.is_bool:
        on = _bool(raw, where, text=text)
        if isinstance(action, argparse.BooleanOptionalAction):
            return on
        return action.const if on else (not action.const if isinstance(action.const, bool) else action.default)
    if isinstance(action, argparse._CountAction):
        if text:
            raw = raw.strip()
            if not raw.isdigit():
                raise ConfigError(f"{where}: expected a count (an integer >= 0), got {raw!r:.80}")
            return int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise ConfigError(f"{where}: expected a count (an integer >= 0), got {raw!r:.80}")
        return raw
    if option.is_list:
        if text:  # repeatable flags: comma-separated; multi-value flags: words, as on a command line
            items = [i.strip() for i in raw.split(",") if i.strip()] if action.nargs is None else shlex.split(raw)
        else:
            items = raw if isinstance(raw, list) else [raw]
        values = [_scalar(option, item, where, text=text) for item in items]
        if isinstance(action, argparse._AppendAction) and action.nargs not in (None, "?"):
            values = [[v] for v in values]
        return _FromConfig(values) if isinstance(action, (argparse._AppendAction, argparse._ExtendAction)) else values
    return _scalar(option, raw, where, text=text)


def resolve(
    parser: argparse.ArgumentParser, table: str, argv: Sequence[str], environ: Mapping[str, str] | None = None,
    *, options_parser: argparse.ArgumentParser | None = None,
) -> Resolution:  # fmt: skip
    """Read the file and environment for ``parser``'s options and make them its defaults.

    Args:
        parser: the binary's parser; its actions' defaults are replaced in place.
        table: ``coordinator``, ``worker`` or ``client``.
        argv: the command line (only ``--config`` is read here).
        environ: the environment (default: ``os.environ``).
        options_parser: the parser whose options are settings; default: the options
            ``xpipe``'s subcommands share when ``parser`` is ``xpipe``'s (see
            :func:`register_command`), else ``parser``.

    Raises:
        ConfigError: the file cannot be read, or a key, a type or a value is wrong; the
            message names the key, the table and the file (or the variable).
    """
    environ = os.environ if environ is None else environ
    options_parser = options_parser or _SHARED.get(parser) or parser
    options = options_of(options_parser)
    path = _config_path(argv, environ, parser.prog)
    resolution = Resolution(table, path, options_parser, options)
    by_key = {k: o for o in options for k in o.keys}
    if path is not None:
        seen: dict[str, str] = {}
        for name, (raw, where, place) in _load_file(path, table).items():
            option = by_key.get(name)
            if option is None:
                raise ConfigError(f"unknown {where}: {TABLES[table]} has no option --{name.replace('_', '-')}"
                                  f"{_did_you_mean(name, by_key)}")  # fmt: skip
            dest = option.action.dest
            if dest in seen:
                raise ConfigError(f"{where}: sets the same option as {seen[dest]!r}")
            seen[dest] = name
            resolution.layered[dest] = (_convert(option, raw, where, text=False), f"file {place}")
    for option in options:
        if option.key in ENV_EXCEPTIONS.get(table, ()):
            continue
        # An empty variable counts as unset, as XPIPE_CONNECT_TIMEOUT always did.
        given = [name for name in option.env_names() if environ.get(name, "").strip()]
        if len(given) > 1:
            raise ConfigError(f"environment: {given[0]} and {given[1]} set the same option {option.flag}")
        if given:
            name = given[0]
            value = _convert(option, environ[name], f"environment variable {name} ({option.flag})", text=True)
            resolution.layered[option.action.dest] = (value, f"env {name}")
    for option in options:
        layered = resolution.layered.get(option.action.dest)
        if layered is not None:
            option.action.default = layered[0]
    return resolution


def _did_you_mean(name: str, keys: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(keys), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_args(
    parser: argparse.ArgumentParser, table: str, argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:  # fmt: skip
    """``parser.parse_args(argv)`` over the config file and ``XPIPE_*`` variables.

    A bad setting ends the process with one line naming it on stderr and status 2, like
    any other usage error, without a traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        resolution = resolve(parser, table, argv, environ)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    namespace = parser.parse_args(argv)
    namespace.config_resolution = resolution  # for `xpipe config show`
    namespace.config_argv = argv
    return namespace


def given_flags(options_parser: argparse.ArgumentParser, options: list[Option], argv: Sequence[str]) -> set[str]:
    """The dests that flags in ``argv`` set (parsed again over markers, so defaults do not count)."""
    probe = argparse.Namespace(**{o.action.dest: _UNSET for o in options})
    namespace, _ = options_parser.parse_known_args(list(argv), probe)
    return {o.action.dest for o in options if getattr(namespace, o.action.dest) is not _UNSET}


def settings(
    resolution: Resolution, options_parser: argparse.ArgumentParser, argv: Sequence[str],
    namespace: argparse.Namespace | None = None,
) -> list[Setting]:  # fmt: skip
    """Every option's effective value and its source, for ``xpipe config show``."""
    if namespace is None:
        namespace, _ = options_parser.parse_known_args(list(argv))
    flags = given_flags(options_parser, resolution.options, argv)
    found = []
    for option in resolution.options:
        dest = option.action.dest
        value = getattr(namespace, dest, option.action.default)
        if dest in flags:
            source = "flag " + option.flag
        elif dest in resolution.layered:
            source = resolution.layered[dest][1]
        else:
            source = "default"
        found.append(Setting(option, list(value) if isinstance(value, list) else value, source))
    return found


# --------------------------------------------------------------------------- xpipe config show

#: ``xpipe``'s parser -> the parser of the options its subcommands share (the [client] table).
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_command(
    parser: argparse.ArgumentParser, sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Add ``xpipe config show``, and make ``common``'s options the ``[client]`` settings."""
    _SHARED[parser] = common
    config = sub.add_parser("config", help="the effective settings of a binary and where each comes from")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show", parents=[common], help="print the effective settings and their sources (flag, env, file:line, default)",
        description="Print the settings a binary would use, from flags, XPIPE_* variables, the --config file "
                    "(or $XPIPE_CONFIG) and defaults, with where each came from. After --, flags of the daemon "
                    "named by --for, as they would be given to it.",
    )  # fmt: skip
    show.add_argument("--for", dest="for_table", choices=list(TABLES), default="client",
                      help="whose settings: coordinator, worker or client (this command)")  # fmt: skip
    show.add_argument("daemon_args", nargs="*", metavar="FLAG", help="after --: the daemon's flags")
    show.set_defaults(fn=cmd_config_show)


def _daemon_parser(table: str) -> argparse.ArgumentParser:
    if table == "coordinator":
        from xpipe.coordinator._main import build_parser
    else:
        from xpipe.worker._main import build_parser
    return build_parser()


def _shown(setting: Setting) -> Any:
    value = setting.value
    if isinstance(value, Path):
        value = str(value)
    if value not in (None, "", []) and SECRET_KEY_RE.search(setting.option.key):
        return "***"
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string


def cmd_config_show(opts: argparse.Namespace) -> int:
    """``xpipe config show``: text (TOML with the sources as comments) or ``--json``."""
    table = opts.for_table
    if table == "client":
        if opts.daemon_args:
            raise SystemExit("xpipe config show: flags after -- are for --for coordinator or worker")
        resolution = opts.config_resolution
        found = settings(resolution, resolution.options_parser, opts.config_argv, opts)
    else:
        parser = _daemon_parser(table)
        daemon_argv = list(opts.daemon_args)
        if opts.config and "--config" not in daemon_argv:
            daemon_argv = ["--config", opts.config, *daemon_argv]
        try:
            resolution = resolve(parser, table, daemon_argv)
        except ConfigError as exc:
            raise SystemExit(f"xpipe config show: {exc}") from None
        namespace = parser.parse_args(daemon_argv)
        found = settings(resolution, parser, daemon_argv, namespace)
    path = str(resolution.path) if resolution.path else None
    if opts.json:
        rows = [{"key": s.option.key, "flag": s.option.flag,
                 "env": None if s.option.key in ENV_EXCEPTIONS[table] else s.option.env_names()[0],
                 "value": _shown(s), "source": s.source} for s in found]  # fmt: skip
        print(json.dumps({"table": table, "binary": TABLES[table], "file": path, "settings": rows}, indent=2,
                         default=str))  # fmt: skip
        return 0
    print(f"# {TABLES[table]}: effective settings (flags > env > file {path or '(none)'} > defaults)")
    print(f"[{table}]")
    for s in found:
        value = _shown(s)
        line = f"# {s.option.key} is not set" if value is None else f"{s.option.key} = {_toml_value(value)}"
        print(f"{line:<48} # {s.source}")
    return 0
