"""`pipeline.common.parallel`: a stage in a forked process of its own (`in_child_process`) gives back
its result, or its exception as the caller would have caught it in process; `fork_map_telling`
spreads tasks over processes and carries their progress messages to the parent."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pipeline.common import parallel
from pipeline.common.parallel import fork_map_telling, in_child_process


class _NeedsTwoArgs(ValueError):
    """An exception pickle cannot rebuild (its __init__ takes two arguments, its args hold one)."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")


def _pid_and(value: int) -> tuple[int, int]:
    return os.getpid(), value * 2


def _raise_file_not_found(path: str) -> None:
    raise FileNotFoundError(f"no such input: {path}")


def _raise_unpicklable() -> None:
    raise _NeedsTwoArgs("resource_pools", "empty")


def _killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_result_comes_back_from_another_process() -> None:
    pid, doubled = in_child_process(_pid_and, 21)
    assert doubled == 42 and pid != os.getpid()


def test_an_exception_keeps_its_type_and_says_where_it_was_raised() -> None:
    with pytest.raises(FileNotFoundError, match="no such input: lake/x") as caught:
        in_child_process(_raise_file_not_found, "lake/x")
    assert any("_raise_file_not_found" in note for note in caught.value.__notes__)


def test_an_exception_pickle_cannot_rebuild_arrives_as_its_builtin_base() -> None:
    with pytest.raises(ValueError, match="_NeedsTwoArgs: resource_pools: empty"):
        in_child_process(_raise_unpicklable)


def test_a_killed_stage_is_an_error_not_a_hang() -> None:
    with pytest.raises(ChildProcessError, match="exited with code -9"):
        in_child_process(_killed)


def _set_marker() -> None:
    os.environ["PEERSCALE_TEST_STAGE_SETUP"] = "child"


def _read_marker() -> str | None:
    return os.environ.get("PEERSCALE_TEST_STAGE_SETUP")


def test_setup_runs_in_the_child_before_the_task_and_stays_there() -> None:
    assert in_child_process(_read_marker, setup=_set_marker) == "child"
    assert "PEERSCALE_TEST_STAGE_SETUP" not in os.environ


def _wait_for(path: str) -> bool:
    """True once `path` exists (the parent's `meanwhile` writes it), False after 20 s."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


def test_meanwhile_runs_in_the_parent_while_the_child_works(tmp_path) -> None:
    marker = str(tmp_path / "parent-was-here")
    ran_in: list[int] = []

    def meanwhile() -> None:
        ran_in.append(os.getpid())
        open(marker, "w").close()

    assert in_child_process(_wait_for, marker, meanwhile=meanwhile) is True  # the child saw it while running
    assert ran_in == [os.getpid()]


def test_a_failing_meanwhile_does_not_fail_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    def meanwhile() -> None:
        raise ImportError("no module named 'plotting'")

    # recorded at the module's logger call: once an earlier test configured Airflow's logging, caplog's
    # handlers may not see it (as in tests/test_iac_zones.py)
    warned: list[str] = []
    monkeypatch.setattr(parallel.log, "warning", lambda msg, *args, **_: warned.append(msg % args))
    pid, doubled = in_child_process(_pid_and, 4, meanwhile=meanwhile)
    assert doubled == 8 and pid != os.getpid()
    assert any("no module named 'plotting'" in w for w in warned)


def _square_telling(value: int, tell) -> tuple[int, int]:
    for step in range(value):
        tell((value, step))
    if value < 0:
        raise ValueError(f"negative: {value}")
    return os.getpid(), value * value


def test_tasks_spread_over_processes_tell_the_parent_and_keep_their_order() -> None:
    heard: list[tuple[int, int]] = []
    results = fork_map_telling(_square_telling, [5, 1, 3, 0, 4], 2, heard.append)
    assert [square for _, square in results] == [25, 1, 9, 0, 16], "results in the order of the items"
    assert {pid for pid, _ in results} - {os.getpid()}, "the tasks ran in other processes"
    assert sorted(heard) == sorted((v, s) for v in (5, 1, 3, 0, 4) for s in range(v)), "every message, once"
    for value in (5, 3, 4):  # one task's messages arrive in the order it told them
        assert [s for v, s in heard if v == value] == list(range(value))
    heard_here: list[tuple[int, int]] = []
    in_process = fork_map_telling(_square_telling, [5, 1, 3, 0, 4], 1, heard_here.append)
    assert [square for _, square in in_process] == [25, 1, 9, 0, 16] and {pid for pid, _ in in_process} == {os.getpid()}
    assert sorted(heard_here) == sorted(heard)


def test_a_failing_task_raises_in_the_parent() -> None:
    with pytest.raises(ValueError, match="negative: -2"):
        fork_map_telling(_square_telling, [2, -2, 3], 2, lambda _message: None)
