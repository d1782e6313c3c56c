"""`pipeline.common.parallel.in_child_process`: a stage in a forked process of its own gives back
its result, or its exception as the caller would have caught it in process."""

from __future__ import annotations

import os
import signal

import pytest

from pipeline.common.parallel import in_child_process


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
