"""
Jobs for :func:`aiorunner.run_many`: the ``Job`` spec, the dependency graph, jobs files.

A ``Job`` is plain data (picklable, no callbacks), so that an executor can ship it to
another machine; ``run_many`` also takes ready :class:`ScriptRunner` objects and bare
paths, which :func:`plan` turns into the same shape. The graph is checked before anything
starts: duplicate names, a prerequisite that is not a job and a cycle are
:class:`ConfigError`\\ s naming the jobs involved, so a typo in a pipeline costs no run.

A jobs file is TOML::

    max_concurrency = 4          # optional; -j overrides
    fail_fast = false            # optional
    trace = "batch"              # optional: "per-run" (default) or "batch"

    [defaults]                   # optional: every job gets these unless it sets its own
    timeout = 60
    env = { DAY = "2024-10-23" } # merged under each job's env

    [[jobs]]
    name = "extract"             # optional; default: the script path
    script = "extract.py"        # relative paths are relative to the jobs file
    args = ["--day", "2024-10-23"]

    [[jobs]]
    name = "load"
    script = "load.py"
    after = ["extract"]          # starts only once extract succeeded
    resources = { GPU = 1 }      # optional: Dask worker resources (DaskExecutor)

    [executor]                   # optional: run the jobs on a Dask cluster
    dask = "tcp://scheduler:8786"
    ship_script = false          # true: send each script's bytes with its task
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from .._exceptions import ConfigError

if TYPE_CHECKING:
    from .._run.runner import ScriptRunner

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, no-redef]

__all__ = [
    "Job",
    "JobLike",
    "JobsFile",
    "Node",
    "load_jobs_file",
    "parse_jobs",
    "plan",
]

#: What ``run_many`` accepts for one job.
JobLike = Union["Job", "ScriptRunner", str, "os.PathLike[str]"]

TRACE_MODES = ("per-run", "batch")


def _positive_seconds(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _non_negative_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{what} must be an integer >= 0, got {value!r}")
    return value


def _str_tuple(value: Any, what: str, example: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{what} must be a list of strings (e.g. {example}), got {value!r}")
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of strings (e.g. {example}), got {value!r}")
    return tuple(value)


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str)
        and k
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and v > 0
        for k, v in value.items()
    ):
        raise ConfigError(
            f"Job resources must map resource names to positive amounts "
            f"(e.g. {{'GPU': 1}}), got {value!r}"
        )
    return {k: float(v) for k, v in value.items()}


@dataclass(frozen=True)
class Job:
    """
    One script to run in :func:`aiorunner.run_many`, as plain data.

    Args:
        script: path of the script (as for :class:`ScriptRunner`).
        args: its arguments.
        name: how other jobs refer to it in ``after`` and how progress and the summary
            show it; default: ``script`` (made unique with ``#2``, ``#3``... when several
            jobs run the same script).
        env: variables added to (or overriding) the inherited environment.
        cwd: working directory of the script (default: ours).
        timeout: seconds for one attempt (default: ``run_many``'s ``timeout``).
        retries: extra attempts after a failure (default: ``run_many``'s ``retries``).
        after: names of jobs that must succeed before this one starts.
        interpreter: the Python for ``.py`` scripts (default: ours).
        resources: Dask worker resources an attempt needs (``{"GPU": 1}``), for the
            ``DaskExecutor``; the local executor ignores them.

    Raises:
        ConfigError: a field has the wrong type or value (the message names it).
    """

    script: str
    args: tuple[str, ...] = ()
    name: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    retries: int | None = None
    after: tuple[str, ...] = ()
    interpreter: str | None = None
    resources: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise in place (frozen: object.__setattr__) so that lists from TOML or
        # user code become the tuples the dataclass promises.
        if not isinstance(self.script, (str, os.PathLike)) or not os.fspath(self.script):
            raise ConfigError(f"Job script must be a path, got {self.script!r}")
        set_ = object.__setattr__
        set_(self, "script", os.fspath(self.script))
        set_(self, "args", _str_tuple(self.args, "Job args", "['--day', '2024-10-23']"))
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ConfigError(f"Job name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()
        ):
            raise ConfigError(
                f"Job env must map str to str (e.g. {{'DAY': '2024-10-23'}}), got {self.env!r}"
            )
        set_(self, "env", dict(self.env))
        if self.cwd is not None:
            set_(self, "cwd", os.fspath(self.cwd))
        if self.interpreter is not None:
            set_(self, "interpreter", os.fspath(self.interpreter))
        set_(self, "timeout", _positive_seconds(self.timeout, "Job timeout"))
        _non_negative_int(self.retries, "Job retries")
        after = (self.after,) if isinstance(self.after, str) else self.after
        set_(self, "after", _str_tuple(after, "Job after", "['extract']"))
        set_(self, "resources", _resources(self.resources))

    def __hash__(self) -> int:  # env is a dict: hash what identifies the job
        return hash((self.script, self.args, self.name, self.after))


@dataclass
class Node:
    """One job of a planned batch: its position, unique name and what to run."""

    index: int
    name: str
    job: Job | ScriptRunner
    after: tuple[int, ...] = ()
    dependants: list[int] = field(default_factory=list)

    @property
    def script(self) -> str:
        return self.job.script


def _coerce(item: Any, position: int) -> Job | ScriptRunner:
    from .._run.runner import ScriptRunner

    if isinstance(item, (Job, ScriptRunner)):
        return item
    if isinstance(item, (str, os.PathLike)):
        return Job(os.fspath(item))
    raise ConfigError(
        f"job #{position + 1} is {item!r}; run_many takes script paths, "
        "aiorunner.Job specs or ScriptRunner objects"
    )


def plan(jobs: Iterable[JobLike]) -> list[Node]:
    """
    Turn ``jobs`` into nodes with unique names and resolved prerequisites.

    Raises:
        ConfigError: not a job, a duplicate explicit name, a prerequisite that is not a
            job, or a cycle (the message shows it: ``a -> b -> a``).
    """
    if isinstance(jobs, (str, bytes, os.PathLike)):
        raise ConfigError(
            f"run_many takes a list of jobs, got the single path {jobs!r}; wrap it: [{jobs!r}]"
        )
    items = [_coerce(item, i) for i, item in enumerate(jobs)]
    explicit: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.name if isinstance(item, Job) else None
        if name is None:
            continue
        if name in explicit:
            raise ConfigError(
                f"two jobs are named {name!r} (#{explicit[name] + 1} and #{i + 1}); "
                "job names must be unique"
            )
        explicit[name] = i
    nodes: list[Node] = []
    taken = set(explicit)
    next_number: dict[str, int] = {}  # per script: where the search for a free #n resumes
    for i, item in enumerate(items):
        name = item.name if isinstance(item, Job) else None
        if name is None:
            name = base = item.script
            n = next_number.get(base, 2)
            while name in taken:
                name, n = f"{base} #{n}", n + 1
            next_number[base] = n
            taken.add(name)
        nodes.append(Node(i, name, item))
    by_name = {node.name: node.index for node in nodes}
    for node in nodes:
        if not isinstance(node.job, Job) or not node.job.after:
            continue
        after = []
        for prerequisite in node.job.after:
            if prerequisite not in by_name:
                raise ConfigError(
                    f"job {node.name!r} is after {prerequisite!r}, which is not a job; "
                    f"jobs: {', '.join(sorted(by_name))}"
                )
            index = by_name[prerequisite]
            if index not in after:
                after.append(index)
                nodes[index].dependants.append(node.index)
        node.after = tuple(after)
    cycle = _find_cycle(nodes)
    if cycle is not None:
        path = " -> ".join(nodes[i].name for i in cycle)
        raise ConfigError(
            f"the jobs' dependencies form a cycle: {path}; remove one of these `after` entries"
        )
    return nodes


def _find_cycle(nodes: Sequence[Node]) -> list[int] | None:
    """A cycle as node indexes ``[a, b, ..., a]`` (edges prerequisite -> dependant), or None.

    Iterative depth-first search, so a long chain of jobs cannot hit the recursion limit.
    """
    white, grey, black = 0, 1, 2
    colour = [white] * len(nodes)
    for start in range(len(nodes)):
        if colour[start] != white:
            continue
        stack: list[tuple[int, int]] = [(start, 0)]
        path: list[int] = [start]
        colour[start] = grey
        while stack:
            index, edge = stack[-1]
            children = nodes[index].dependants
            if edge < len(children):
                stack[-1] = (index, edge + 1)
                child = children[edge]
                if colour[child] == grey:
                    return [*path[path.index(child) :], child]
                if colour[child] == white:
                    colour[child] = grey
                    stack.append((child, 0))
                    path.append(child)
            else:
                colour[index] = black
                stack.pop()
                path.pop()
    return None


# -- jobs files ---------------------------------------------------------------------------

_JOB_KEYS = (
    "name",
    "script",
    "args",
    "env",
    "cwd",
    "timeout",
    "retries",
    "after",
    "interpreter",
    "resources",
)
_DEFAULT_KEYS = ("args", "env", "cwd", "timeout", "retries", "interpreter", "resources")
_EXECUTOR_KEYS = ("dask", "ship_script")
_TOP_KEYS = (
    "jobs",
    "defaults",
    "max_concurrency",
    "fail_fast",
    "retries",
    "retry_backoff",
    "timeout",
    "trace",
    "executor",
)


@dataclass(frozen=True)
class JobsFile:
    """What a jobs file says: its jobs and the batch options it sets (None: not set)."""

    path: str
    jobs: tuple[Job, ...]
    max_concurrency: int | None = None
    fail_fast: bool | None = None
    retries: int | None = None
    retry_backoff: float | None = None
    timeout: float | None = None
    trace: str | None = None
    #: The ``[executor]`` table: ``dask`` (a scheduler address), ``ship_script``.
    executor: Mapping[str, Any] = field(default_factory=dict)


def _resolve_path(value: str, base: str) -> str:
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else os.path.normpath(os.path.join(base, expanded))


def _unknown_keys(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; accepted keys: {', '.join(allowed)}"
        )


def parse_jobs(data: Mapping[str, Any], *, base_dir: str, source: str = "jobs file") -> JobsFile:
    """
    Build a :class:`JobsFile` from parsed TOML (``base_dir`` anchors relative paths).

    Raises:
        ConfigError: an unknown key, a wrong type, no jobs, or a bad dependency graph.
    """
    _unknown_keys(data, _TOP_KEYS, source)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"{source}: [defaults] must be a table, got {defaults!r}")
    _unknown_keys(defaults, _DEFAULT_KEYS, f"{source} [defaults]")
    raw_jobs = data.get("jobs")
    if not isinstance(raw_jobs, list) or not raw_jobs:
        raise ConfigError(
            f"{source}: no jobs; add at least one [[jobs]] table with a script, e.g.\n"
            '[[jobs]]\nscript = "extract.py"'
        )
    jobs = []
    for number, raw in enumerate(raw_jobs, start=1):
        where = f"{source} job #{number}"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table ([[jobs]]), got {raw!r}")
        _unknown_keys(raw, _JOB_KEYS, where)
        if "name" in raw:
            where = f"{source} job {raw['name']!r}"
        if not isinstance(raw.get("script"), str) or not raw["script"]:
            raise ConfigError(f'{where}: script is required, e.g. script = "extract.py"')
        merged: dict[str, Any] = {**defaults, **raw}
        env = {**defaults.get("env", {}), **raw.get("env", {})}
        if env:
            merged["env"] = env
        merged["script"] = _resolve_path(merged["script"], base_dir)
        for key in ("cwd", "interpreter"):
            value = merged.get(key)
            if isinstance(value, str) and (key == "cwd" or os.sep in value):
                merged[key] = _resolve_path(value, base_dir)
        try:
            jobs.append(Job(**merged))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except TypeError as exc:  # a value TOML typed in a way Job cannot take
            raise ConfigError(f"{where}: {exc}") from None
    max_concurrency = data.get("max_concurrency")
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or max_concurrency < 1
    ):
        raise ConfigError(
            f"{source}: max_concurrency must be an integer >= 1, got {max_concurrency!r}"
        )
    fail_fast = data.get("fail_fast")
    if fail_fast is not None and not isinstance(fail_fast, bool):
        raise ConfigError(f"{source}: fail_fast must be true or false, got {fail_fast!r}")
    trace = data.get("trace")
    if trace is not None and trace not in TRACE_MODES:
        raise ConfigError(f"{source}: trace must be one of {', '.join(TRACE_MODES)}, got {trace!r}")
    executor = data.get("executor", {})
    if not isinstance(executor, Mapping):
        raise ConfigError(
            f'{source}: [executor] must be a table, e.g. [executor] dask = "tcp://host:8786"'
        )
    _unknown_keys(executor, _EXECUTOR_KEYS, f"{source} [executor]")
    if "dask" in executor and (not isinstance(executor["dask"], str) or not executor["dask"]):
        raise ConfigError(
            f"{source} [executor]: dask must be the scheduler's address, e.g. "
            f'dask = "tcp://host:8786", got {executor["dask"]!r}'
        )
    if not isinstance(executor.get("ship_script", False), bool):
        raise ConfigError(
            f"{source} [executor]: ship_script must be true or false, "
            f"got {executor['ship_script']!r}"
        )
    result = JobsFile(
        path=source,
        jobs=tuple(jobs),
        max_concurrency=max_concurrency,
        fail_fast=fail_fast,
        retries=_non_negative_int(data.get("retries"), f"{source}: retries"),
        retry_backoff=_non_negative_seconds(data.get("retry_backoff"), f"{source}: retry_backoff"),
        timeout=_positive_seconds(data.get("timeout"), f"{source}: timeout"),
        trace=trace,
        executor=dict(executor),
    )
    try:
        plan(result.jobs)  # names, prerequisites and cycles are checked now, not mid-batch
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return result


def _non_negative_seconds(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{what} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def load_jobs_file(path: str | os.PathLike[str]) -> JobsFile:
    """
    Read a TOML jobs file (blocking: call it before the event loop or in a thread).

    Raises:
        ConfigError: the file is missing, is not valid TOML, or describes bad jobs.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"jobs file not found: {path}; check the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read jobs file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"jobs file {path} is not valid TOML: {exc}") from None
    base_dir = os.path.dirname(os.path.abspath(path))
    return parse_jobs(data, base_dir=base_dir, source=path)
