"""Limits on what a request may carry, and the one table of resource names.

A leaf module: it imports nothing of ours, so the SDK (which checks early, at ``Task(...)``),
the coordinator (which checks every request and worker message again, since clients in other
languages skip the SDK) and the worker CLI all use the same numbers and the same names.
``docs/api.md`` ("Limits") lists them for users.

A limit exists so that one request cannot make the coordinator hold, log or store something
absurd (a 1,000,000-character task name goes into every log line and store key), and so that
a number that cannot mean anything (NaN, infinity, a negative core count) is refused at the
door instead of reaching the scheduler's arithmetic.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_MESSAGE_BYTES", "MAX_LIST_RUNS", "MAX_NAME_CHARS", "MAX_LABEL_VALUE_CHARS", "MAX_TEXT_CHARS",
    "MAX_PATH_CHARS", "MAX_LABELS", "MAX_CUSTOM_RESOURCES", "MAX_TASKS", "MAX_DEPENDS_ON", "MAX_COMMAND_CHARS",
    "MAX_SLOTS", "MAX_HANDLERS", "MAX_RUNNING_REFS", "MAX_DURATION_S", "MAX_UNIX_TIME_S", "MAX_RESOURCE_AMOUNT",
    "MAX_MEMORY_BYTES", "MAX_GPUS", "MAX_COMMAND_STDOUT_LIMIT_BYTES", "MAX_ARTIFACT_CHUNK_BYTES", "NAME_RE", "SHOWN_CHARS", "MEMORY_UNITS", "RESOURCE_ALIASES",
    "ResourceAmounts", "normalize_resources", "parse_quantity", "finite_problem", "shown", "name_problem",
    "labels_problem", "command_problem", "KEEPALIVE_TIME_MS", "KEEPALIVE_TIMEOUT_MS", "MIN_PING_INTERVAL_MS",
    "CONNECT_ATTEMPT_TIMEOUT_MS", "CLIENT_KEEPALIVE_OPTIONS", "TRANSITION_LOG_ENTRIES", "STORY_HISTORY_ENTRIES",
    "MAX_INSTALL_PACKAGES", "MAX_REQUIREMENT_CHARS", "HISTORY_DEFAULT_RUNS", "HISTORY_MAX_TASKS",
    "DEFAULT_INSTALL_TIMEOUT_S", "MAX_INSTALL_TIMEOUT_S", "INSTALL_OUTPUT_TAIL_CHARS",
    "METRIC_NAME_RE", "METRIC_LABEL_RE", "RESERVED_METRIC_LABELS", "MAX_METRIC_NAME_CHARS", "MAX_METRIC_LABELS",
    "MAX_METRIC_LABEL_VALUE_CHARS", "MAX_METRIC_POINTS", "MAX_METRIC_WARNINGS", "MAX_MONITORING_CONFIG_CHARS",
    "MAX_PARTITIONS", "MAX_PARALLELISM", "MAX_TASK_CHECKPOINT_BYTES",
]  # fmt: skip

#: Largest gRPC message sent or accepted by any of our channels (a whole pipeline spec travels in one).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Most runs one ListRuns answer carries; a larger ``limit`` is taken as this.
MAX_LIST_RUNS = 10_000
#: Names: pipeline, task, handler, circuit, worker id/name/host, label keys, custom resources.
MAX_NAME_CHARS = 256
#: Label values (pipeline, task and worker labels).
MAX_LABEL_VALUE_CHARS = 1024
#: Other short text: import paths, code hashes, DataFlow keys, idempotency keys, run ids.
MAX_TEXT_CHARS = 1024
#: A command's working directory (Linux PATH_MAX).
MAX_PATH_CHARS = 4096
#: Labels on one pipeline, task or worker.
MAX_LABELS = 64
#: Custom resources in one request or offer.
MAX_CUSTOM_RESOURCES = 64
#: Tasks in one pipeline.
MAX_TASKS = 1_000_000
#: Entries in one task's ``depends_on`` plus its DataFlow bindings.
MAX_DEPENDS_ON = 100_000
#: Partitions (sub-tasks) one fanned-out task may split into: each is a task of the run.
MAX_PARTITIONS = 100_000
#: Largest ``parallelism`` of a fanned-out task (sub-tasks released at once).
MAX_PARALLELISM = 100_000
#: Largest state one ``xpipe.checkpoint()`` may save (encoded): below the codec's limit for
#: one value, so the error names this limit; bigger progress belongs in the task's own files.
MAX_TASK_CHECKPOINT_BYTES = 32 * 1024 * 1024
#: Most of a command's stdout its result may keep (``CommandCall.stdout_limit_bytes``): the
#: result is held in memory by the worker and read whole by clients.
MAX_COMMAND_STDOUT_LIMIT_BYTES = 64 * 1024 * 1024
#: Largest ``GetArtifactRequest.chunk_bytes``: one chunk is one gRPC message, held whole.
MAX_ARTIFACT_CHUNK_BYTES = 1024 * 1024
#: Characters of one command's argv and env together (Linux caps argv+env near 2 MiB).
MAX_COMMAND_CHARS = 1 << 20
#: Slots one worker may claim; more is a lie or a typo.
MAX_SLOTS = 4096
#: Handler names one worker may advertise.
MAX_HANDLERS = 4096
#: Attempt references in one Register or Heartbeat (``running``, ``recent``).
MAX_RUNNING_REFS = 100_000
#: Task transitions the coordinator keeps in memory for ``xpipe story`` (oldest dropped first).
TRANSITION_LOG_ENTRIES = 100_000
#: Story entries of earlier attempts kept with one task's row in the store (oldest dropped first),
#: so a task retried without end cannot grow its row without end.
STORY_HISTORY_ENTRIES = 64
#: Runs one GetHistory answer carries when the request names no ``max_runs`` (MAX_LIST_RUNS at most).
HISTORY_DEFAULT_RUNS = 1_000
#: Tasks one GetHistory answer carries in all: older runs are left out past it, with a note.
HISTORY_MAX_TASKS = 200_000
#: Longest duration anywhere (timeouts, retry delays, waits, circuit windows): one year.
#: Longer is indistinguishable from "never" and only makes a run that cannot end.
MAX_DURATION_S = 366 * 24 * 3600.0
#: Largest amount of cpu cores or of one custom resource, in a request or an offer.
MAX_RESOURCE_AMOUNT = 1e9
#: Largest memory in a request or an offer: 1 EiB.
MAX_MEMORY_BYTES = 1 << 60
#: Largest GPU count in a request or an offer.
MAX_GPUS = 1 << 20

#: Requirements in one ``install_missing_dependencies`` call (one pip command line).
MAX_INSTALL_PACKAGES = 64
#: Characters of one requirement (``name[extras]>=1.0,<2``).
MAX_REQUIREMENT_CHARS = 200
#: How long pip may run on a worker when the caller names no limit, and the most it may ask for.
DEFAULT_INSTALL_TIMEOUT_S = 300.0
MAX_INSTALL_TIMEOUT_S = 3600.0
#: Characters of pip's output a worker sends back with its answer (the end, where the error is).
INSTALL_OUTPUT_TAIL_CHARS = 4000

#: A client (the SDK, a worker) pings its coordinator connection this often when idle. A
#: frozen (SIGSTOPped) or partitioned peer keeps TCP open, so without pings a watch or a
#: worker stream would hang until the kernel gives up (minutes to hours).
KEEPALIVE_TIME_MS = 10_000
#: ... and drops the connection when any ping (keepalive or HTTP/2 BDP) is unanswered this long.
KEEPALIVE_TIMEOUT_MS = 5_000
#: The coordinator accepts client pings this far apart at the closest. It must not exceed
#: KEEPALIVE_TIME_MS, or the coordinator answers our own pings with GOAWAY too_many_pings.
MIN_PING_INTERVAL_MS = 5_000
#: A new connection that has not received the coordinator's HTTP/2 SETTINGS in this time
#: fails (gRPC's default is 20 s), so a frozen coordinator costs a reconnect this long at most.
CONNECT_ATTEMPT_TIMEOUT_MS = 5_000
#: gRPC channel options that put these on a client channel.
CLIENT_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    # Keep pinging a stream on which the client sends nothing (an idle watch); the default stops after 2.
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.min_reconnect_backoff_ms", CONNECT_ATTEMPT_TIMEOUT_MS),
)

#: Latest timestamp a worker may report (unix seconds, 2^33: the year 2242).
MAX_UNIX_TIME_S = float(2**33)

#: What a task name may be: it becomes part of file names (artifacts), store keys and log
#: lines, so no whitespace, no '/', no control characters.
NAME_RE = re.compile(r"[^\s/\x00-\x1f\x7f]+")

#: Characters of a refused value quoted in an error message.
SHOWN_CHARS = 80

#: What a task's metric may be called (``xpipe.record_metric``, ``@pipeline.track_metric``):
#: Prometheus' rule for metric names, so every name exports as it is.
METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
#: What a metric's label may be called: Prometheus' rule for label names.
METRIC_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: Label names a task's metric may not use: the export adds them itself (``xpipe_custom_metric
#: {name=..., pipeline=..., task=...}``), and Prometheus reserves names starting with "__".
RESERVED_METRIC_LABELS = frozenset({"name", "pipeline", "task"})
#: Characters of one metric name.
MAX_METRIC_NAME_CHARS = 200
#: Labels on one metric point (each label multiplies the series an export keeps).
MAX_METRIC_LABELS = 16
#: Characters of one metric label value.
MAX_METRIC_LABEL_VALUE_CHARS = 256
#: Metric points one attempt keeps; later ones are dropped and a warning says how many.
MAX_METRIC_POINTS = 1000
#: Warnings one attempt keeps (tracked values not found, points dropped).
MAX_METRIC_WARNINGS = 32
#: Characters of ``Pipeline.enable_monitoring``'s config as stored with the run (JSON).
MAX_MONITORING_CONFIG_CHARS = 64 * 1024

#: Memory units, for ``memory=16Gi`` (binary) or ``memory=16G`` (decimal); a trailing
#: ``B`` is allowed (``16GiB``); case does not matter.
MEMORY_UNITS: dict[str, int] = {
    "": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
}  # fmt: skip

#: Every accepted resource key -> (canonical resource, multiplier to its unit). The same keys
#: work in ``Task(resource_requirements=...)``, ``resource_constraints`` and
#: ``xpipe-worker --resources``. ``memory`` alone is bytes, or a quantity such as "16Gi".
RESOURCE_ALIASES: dict[str, tuple[str, int]] = {
    "cpu": ("cpu_cores", 1),
    "cpu_cores": ("cpu_cores", 1),
    "memory": ("memory_bytes", 1),
    "memory_bytes": ("memory_bytes", 1),
    "memory_mb": ("memory_bytes", 2**20),
    "memory_gb": ("memory_bytes", 2**30),
    "gpu": ("gpu", 1),
}
_QUANTITY_RE = re.compile(r"\s*(.*?)\s*([kKmMgGtT]i?)?[bB]?\s*")
_UNIT_NAMES = "k, M, G, T, Ki, Mi, Gi, Ti, an optional B"


@dataclass(slots=True)
class ResourceAmounts:
    """Normalized resources; None: the key was not given."""

    cpu_cores: float | None = None
    memory_bytes: int | None = None
    gpu: int | None = None
    custom: dict[str, float] = field(default_factory=dict)


def finite_problem(value: float, *, low: float = 0.0, high: float = math.inf, low_open: bool = False) -> str:
    """Why ``value`` is not a finite number in [low, high] (``(low, high]`` if low_open); "" if it is.

    One chained comparison does the common case, so this is cheap enough for every task.
    """
    if (low < value <= high if low_open else low <= value <= high) and value != math.inf:
        return ""
    if value != value or value in (math.inf, -math.inf):
        word = "nan" if value != value else ("inf" if value > 0 else "-inf")
        return f"is {word}; must be a finite number {'>' if low_open else '>='} {low:g}"
    if value > high:
        return f"is {value!r}; the limit is {high:g}"
    return f"is {value!r}; must be {'>' if low_open else '>='} {low:g}"


def parse_quantity(text: str) -> float:
    """``"16Gi"`` -> 17179869184.0; a plain number is bytes. Raises ValueError naming the unit."""
    try:
        return float(text)
    except ValueError:
        pass
    match = _QUANTITY_RE.fullmatch(text)
    if match is not None:
        number, unit = match.groups()
        try:
            return float(number) * MEMORY_UNITS[(unit or "").lower()]
        except ValueError:
            pass
    raise ValueError(f"not a memory quantity; use a number with an optional unit ({_UNIT_NAMES})")


def normalize_resources(items: Mapping[object, object], *, text: bool = False) -> ResourceAmounts:
    """Map user resource keys (see :data:`RESOURCE_ALIASES`) onto canonical amounts.

    Args:
        items: ``{"cpu": 4, "memory": "16Gi", "gpu": 1, "licenses": 2}``; any key not in
            the alias table is a custom resource.
        text: every value is a string to parse (the worker CLI); otherwise numbers are
            required, except ``memory``, which also takes a quantity string.

    Raises:
        ValueError: naming the key and the value: a bad number, NaN, infinity, a negative,
            too large, a fractional GPU count, or one resource given twice (``cpu`` and
            ``cpu_cores``).
    """
    out = ResourceAmounts()
    given: dict[str, str] = {}
    for key, raw in items.items():
        if not isinstance(key, str) or not key or len(key) > MAX_NAME_CHARS:
            raise ValueError(f"resource name {key!r:.80} must be a non-empty string of at most {MAX_NAME_CHARS} chars")
        canonical, scale = RESOURCE_ALIASES.get(key, (key, 1))
        if canonical in given:
            what = canonical.removesuffix("_cores").removesuffix("_bytes")
            raise ValueError(f"gives {what} twice ({given[canonical]!r} and {key!r}); give one")
        given[canonical] = key
        value = _amount(key, raw, text=text) * scale
        if canonical == "cpu_cores":
            _check_amount(key, raw, value, MAX_RESOURCE_AMOUNT)
            out.cpu_cores = value
        elif canonical == "memory_bytes":
            _check_amount(key, raw, value, MAX_MEMORY_BYTES)
            out.memory_bytes = int(value)
        elif canonical == "gpu":
            _check_amount(key, raw, value, MAX_GPUS)
            if value != int(value):
                raise ValueError(f"[{key!r}] must be a whole number, got {raw!r}")
            out.gpu = int(value)
        else:
            _check_amount(key, raw, value, MAX_RESOURCE_AMOUNT)
            out.custom[key] = value
    if len(out.custom) > MAX_CUSTOM_RESOURCES:
        raise ValueError(f"has {len(out.custom)} custom resources; the limit is {MAX_CUSTOM_RESOURCES}")
    return out


def _amount(key: str, raw: object, *, text: bool) -> float:
    if isinstance(raw, str) and (text or key == "memory"):
        try:
            return parse_quantity(raw) if key == "memory" else float(raw)
        except ValueError as exc:
            raise ValueError(f"[{key!r}] is not a number: {raw!r:.80} ({exc})") from None
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        raise ValueError(f"[{key!r}] must be a finite number >= 0, got {raw!r:.80}")
    try:
        return float(raw)
    except OverflowError:  # an int beyond any float
        return math.inf


def _check_amount(key: str, raw: object, value: float, high: float) -> None:
    problem = finite_problem(value, high=high)
    if problem:
        raise ValueError(f"[{key!r}] {problem} (given {raw!r})")


def name_problem(field: str, value: str) -> str:
    """Why ``value`` is not a valid task name (also for a reference to one); "" if it is."""
    if len(value) > MAX_NAME_CHARS:
        return f"{field} has {len(value)} chars; the limit is {MAX_NAME_CHARS}"
    if NAME_RE.fullmatch(value) is None:
        return f"{field} {shown(value)} must be non-empty, without whitespace, '/' or control characters"
    return ""


def labels_problem(field: str, labels: Mapping[str, str]) -> str:
    """Why a str-to-str label map breaks the limits; "" if it does not."""
    if len(labels) > MAX_LABELS:
        return f"{field} has {len(labels)} entries; the limit is {MAX_LABELS}"
    for key in labels:  # not .items(): on a protobuf map the abc view is several times slower
        if not key or len(key) > MAX_NAME_CHARS:
            return f"{field} key {shown(key)} must have 1 to {MAX_NAME_CHARS} chars"
        if len(labels[key]) > MAX_LABEL_VALUE_CHARS:
            return f"{field}[{shown(key)}] has {len(labels[key])} chars; the limit is {MAX_LABEL_VALUE_CHARS}"
    return ""


def command_problem(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    """Why a command cannot be run as given (NUL bytes, '=' in an env name, too big); "" if it can."""
    total = 0
    for i, arg in enumerate(argv):
        if "\0" in arg:
            return f"command.argv[{i}] contains a NUL character"
        total += len(arg)
    for key in env:
        value = env[key]
        if not key or "=" in key or "\0" in key or "\0" in value:
            return f"command.env key {shown(key)} must be non-empty, without '=' or NUL characters"
        total += len(key) + len(value)
    if total > MAX_COMMAND_CHARS:
        return f"command argv and env have {total} chars; the limit is {MAX_COMMAND_CHARS}"
    if len(cwd) > MAX_PATH_CHARS or "\0" in cwd:
        return f"command.cwd must be a path of at most {MAX_PATH_CHARS} chars without NUL characters"
    return ""


def shown(value: str) -> str:
    """``repr(value)`` cut short, so an error quoting a hostile value stays small."""
    return repr(value) if len(value) <= SHOWN_CHARS else f"{value[:SHOWN_CHARS]!r}... ({len(value)} chars)"
