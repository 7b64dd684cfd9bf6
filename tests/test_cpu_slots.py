"""CPU slots: a job waits while the host's slots are held, and a dead holder frees its slot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from medmix.pipeline import cpu_slots

HOLD = """
import sys, time
from medmix.pipeline.cpu_slots import claim_cpus
held = claim_cpus(int(sys.argv[1]))
print(f"claimed {held} {time.time():.6f}", flush=True)
time.sleep(float(sys.argv[2]))
print(f"exit {time.time():.6f}", flush=True)
"""


def _start(env: dict[str, str], threads: int, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(threads), str(hold_s)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _claimed(proc: subprocess.Popen) -> tuple[int, float]:
    line = proc.stdout.readline().split()
    assert line and line[0] == "claimed", proc.stderr.read()
    return int(line[1]), float(line[2])


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "TMPDIR": str(tmp_path), cpu_slots.ENV: "1"}


def test_a_job_waits_for_the_slot_until_its_holder_exits(env):
    first = _start(env, 1, 1.5)
    assert _claimed(first)[0] == 1
    second = _start(env, 1, 0.0)
    held, claimed_at = _claimed(second)
    first_exit = float(first.stdout.readline().split()[1])
    assert held == 1 and claimed_at >= first_exit, "the second job ran while the only slot was held"
    assert first.wait(10) == 0 and second.wait(10) == 0


def test_a_two_thread_job_waits_for_both_slots(env):
    two = {**env, cpu_slots.ENV: "2"}
    first = _start(two, 1, 1.5)
    _claimed(first)
    second = _start(two, 2, 0.0)  # one slot is free at once, the other when the first job exits
    held, claimed_at = _claimed(second)
    first_exit = float(first.stdout.readline().split()[1])
    assert held == 2 and claimed_at >= first_exit
    assert first.wait(10) == 0 and second.wait(10) == 0


def test_a_killed_holder_frees_its_slot(env):
    first = _start(env, 1, 60)
    _claimed(first)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    second = _start(env, 1, 0.0)
    assert _claimed(second)[0] == 1
    assert second.wait(30) == 0


def test_more_threads_than_slots_claim_every_slot_and_zero_turns_the_limit_off(env):
    both = {**env, cpu_slots.ENV: "2"}
    proc = _start(both, 4, 0.0)
    assert _claimed(proc)[0] == 2
    assert proc.wait(10) == 0
    off = _start({**env, cpu_slots.ENV: "0"}, 1, 0.0)
    assert _claimed(off)[0] == 0
    assert off.wait(10) == 0


def test_a_bad_slot_count_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(cpu_slots.ENV, "two")
    with pytest.raises(ValueError, match=cpu_slots.ENV):
        cpu_slots.slot_count()
    monkeypatch.setenv(cpu_slots.ENV, "-1")
    with pytest.raises(ValueError, match=">= 0"):
        cpu_slots.slot_count()
    monkeypatch.delenv(cpu_slots.ENV)
    assert cpu_slots.slot_count() == (os.cpu_count() or 1)
