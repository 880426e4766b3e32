"""Job specs, the dependency graph (names, prerequisites, cycles) and TOML jobs files:
every bad input is a ConfigError that names the problem, the value and the fix."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiorunner import ConfigError, Job, ScriptRunner, load_jobs_file
from aiorunner._orchestrate.jobs import parse_jobs, plan


def test_job_normalises_fields_and_pickles():
    """Lists become tuples, a single `after` name becomes a tuple, paths become str; a Job
    survives pickling (so an executor can ship it)."""
    job = Job(Path("etl.py"), ["--day", "1"], name="etl", env={"A": "1"}, after="extract")
    assert job.script == "etl.py"
    assert job.args == ("--day", "1")
    assert job.after == ("extract",)
    assert pickle.loads(pickle.dumps(job)) == job
    assert hash(job) == hash(pickle.loads(pickle.dumps(job)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"script": ""}, "Job script must be a path"),
        ({"args": "--day 1"}, r"Job args must be a list of strings"),
        ({"args": ["--n", 3]}, r"Job args must be a list of strings"),
        ({"env": {"N": 3}}, "Job env must map str to str"),
        ({"timeout": -1}, "Job timeout must be a positive number"),
        ({"retries": 1.5}, "Job retries must be an integer >= 0"),
        ({"name": "  "}, "Job name must be a non-empty string"),
        ({"after": [1]}, "Job after must be a list of strings"),
    ],
)
def test_bad_job_fields(kwargs, message):
    """Each bad field is a ConfigError naming the field and the value."""
    fields = {"script": "etl.py", **kwargs}
    with pytest.raises(ConfigError, match=message):
        Job(**fields)


def test_plan_names_are_unique_and_explicit_duplicates_rejected():
    """Default names are the script path, made unique; two explicit equal names fail."""
    nodes = plan(["a.py", Job("a.py"), ScriptRunner("a.py"), Job("b.py", name="a.py #2")])
    assert [n.name for n in nodes] == ["a.py", "a.py #3", "a.py #4", "a.py #2"]
    with pytest.raises(ConfigError, match=r"two jobs are named 'x' \(#1 and #3\)"):
        plan([Job("a.py", name="x"), "b.py", Job("c.py", name="x")])


def test_unknown_prerequisite_lists_the_jobs():
    """A prerequisite that is not a job names it and lists the jobs there are."""
    with pytest.raises(
        ConfigError,
        match=r"'load' is after 'transfrom', which is not a job; jobs: extract, load, transform",
    ):
        plan(
            [
                Job("e.py", name="extract"),
                Job("t.py", name="transform", after=["extract"]),
                Job("l.py", name="load", after=["transfrom"]),
            ]
        )


def test_self_dependency_is_a_cycle():
    """A job after itself is the smallest cycle."""
    with pytest.raises(ConfigError, match="cycle: a -> a"):
        plan([Job("a.py", name="a", after=["a"])])


def test_long_chain_plans_without_recursion():
    """A chain of 5,000 jobs plans fine (iterative search, no recursion limit)."""
    jobs = [Job("s.py", name="j0")] + [
        Job("s.py", name=f"j{i}", after=[f"j{i - 1}"]) for i in range(1, 5000)
    ]
    nodes = plan(jobs)
    assert nodes[-1].after == (4998,)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=2, max_value=12),
    edges=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=30),
    back=st.tuples(st.integers(0, 11), st.integers(0, 11)),
)
def test_cycle_detection_property(size, edges, back):
    """Edges that only point forward never make a cycle; adding a backward edge that
    closes a path makes one, and the reported cycle is a real cycle of the graph."""
    forward = {(min(a, b), max(a, b)) for a, b in edges if a < size and b < size and a != b}
    after: dict[int, set[int]] = {i: set() for i in range(size)}
    for a, b in forward:
        after[b].add(a)  # b runs after a

    def jobs():
        return [
            Job("s.py", name=f"n{i}", after=[f"n{p}" for p in sorted(after[i])])
            for i in range(size)
        ]

    plan(jobs())  # a DAG: no error
    a, b = back[0] % size, back[1] % size
    if a >= b:
        return
    # does b depend (transitively) on a? then "a after b" closes a cycle
    reach, todo = set(), [b]
    while todo:
        for p in after[todo.pop()]:
            if p not in reach:
                reach.add(p)
                todo.append(p)
    after[a].add(b)
    if a not in reach:
        plan(jobs())
        return
    with pytest.raises(ConfigError, match="cycle") as info:
        plan(jobs())
    names = str(info.value).split("cycle: ")[1].split(";")[0].split(" -> ")
    assert names[0] == names[-1]
    for prerequisite, dependant in itertools.pairwise(names):
        assert int(prerequisite[1:]) in after[int(dependant[1:])]


JOBS_TOML = """
max_concurrency = 3
fail_fast = true
trace = "batch"
retry_backoff = 0.1

[defaults]
timeout = 60
retries = 1
env = { DAY = "2024-10-23", REGION = "eu" }

[[jobs]]
name = "extract"
script = "scripts/extract.py"
args = ["--day", "2024-10-23"]

[[jobs]]
name = "load"
script = "/abs/load.py"
env = { REGION = "us" }
timeout = 5
retries = 0
after = ["extract"]
cwd = "out"
"""


def test_jobs_file_read(tmp_path):
    """A jobs file gives jobs with defaults merged (a job's own values win, env merged),
    paths relative to the file, and the batch options."""
    path = tmp_path / "jobs.toml"
    path.write_text(JOBS_TOML)
    spec = load_jobs_file(path)
    assert spec.max_concurrency == 3 and spec.fail_fast is True and spec.trace == "batch"
    assert spec.retry_backoff == 0.1 and spec.retries is None
    extract, load = spec.jobs
    assert extract.name == "extract"
    assert extract.script == str(tmp_path / "scripts" / "extract.py")
    assert extract.args == ("--day", "2024-10-23")
    assert extract.env == {"DAY": "2024-10-23", "REGION": "eu"}
    assert (extract.timeout, extract.retries) == (60.0, 1)
    assert load.script == "/abs/load.py"
    assert load.env == {"DAY": "2024-10-23", "REGION": "us"}
    assert (load.timeout, load.retries, load.after) == (5.0, 0, ("extract",))
    assert load.cwd == str(tmp_path / "out")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[jobs]]\nscript = "a.py"\nretires = 2\n',
            r"job #1: unknown key 'retires'; accepted keys: name, script",
        ),
        ('[[jobs]]\nname = "x"\nargs = ["a"]\n', r"job 'x': script is required"),
        ("max_concurrency = 2\n", r"no jobs; add at least one \[\[jobs\]\]"),
        ("jobs = 3\n", r"no jobs"),
        ('paralel = 2\n[[jobs]]\nscript = "a.py"\n', r"unknown key 'paralel'"),
        (
            '[defaults]\nafter = ["x"]\n[[jobs]]\nscript = "a.py"\n',
            r"\[defaults\]: unknown key 'after'",
        ),
        (
            'trace = "tree"\n[[jobs]]\nscript = "a.py"\n',
            r"trace must be one of per-run, batch, got 'tree'",
        ),
        (
            'max_concurrency = 0\n[[jobs]]\nscript = "a.py"\n',
            r"max_concurrency must be an integer >= 1",
        ),
        (
            '[[jobs]]\nscript = "a.py"\ntimeout = "soon"\n',
            r"job #1: Job timeout must be a positive number of seconds, got 'soon'",
        ),
        ('[[jobs]]\nscript = "a.py"\nargs = "--x"\n', r"Job args must be a list of strings"),
        (
            (
                '[[jobs]]\nname = "a"\nscript = "a.py"\nafter = ["b"]\n'
                '[[jobs]]\nname = "b"\nscript = "b.py"\nafter = ["a"]\n'
            ),
            r"cycle: a -> b -> a",
        ),
        ("[[jobs]\n", r"is not valid TOML"),
    ],
)
def test_bad_jobs_files(tmp_path, text, message):
    """Each mistake in a jobs file is a ConfigError naming the file, the job and the fix."""
    path = tmp_path / "jobs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_jobs_file(path)
    assert str(path) in str(info.value)


def test_missing_jobs_file(tmp_path):
    """A missing jobs file says so with its path."""
    with pytest.raises(ConfigError, match=r"jobs file not found: .*nope\.toml"):
        load_jobs_file(tmp_path / "nope.toml")


def test_parse_jobs_from_a_mapping():
    """parse_jobs takes already-parsed data (e.g. from another config system)."""
    spec = parse_jobs({"jobs": [{"script": "a.py"}]}, base_dir="/srv")
    assert spec.jobs[0].script == "/srv/a.py"
