"""The scheduler (`ebm.scheduler`): capacity, FIFO order, one job per session, shared keys, cancellation.

Work functions here block on events the test sets, so every check waits on state, never on time.
"""

from __future__ import annotations

import threading

import pytest

from ebm.scheduler import CANCELLED, DONE, QUEUED, RUNNING, Cancelled, Scheduler

TIMEOUT = 60  # seconds; only reached when something is broken


class Gate:
    """Work that reports it started, then runs `blocks` blocks of steps, each after the gate opens."""

    def __init__(self, value, blocks: int = 1):
        self.value, self.blocks = value, blocks
        self.started, self.open, self.stopped_at = threading.Event(), threading.Event(), None
        self.returned = threading.Event()

    def __call__(self, should_stop):
        self.started.set()
        try:
            for block in range(1, self.blocks + 1):
                assert self.open.wait(TIMEOUT)
                if should_stop(block):
                    self.stopped_at = block
                    return None
            return self.value
        finally:
            self.returned.set()


def started(gate: Gate) -> Gate:
    assert gate.started.wait(TIMEOUT), "the job never started"
    return gate


def test_at_most_capacity_jobs_run_and_the_rest_wait_in_order():
    scheduler = Scheduler(capacity=lambda: 2)
    gates = [Gate(i) for i in range(5)]
    tickets = [scheduler.submit(("job", i), f"session{i}", gate) for i, gate in enumerate(gates)]
    started(gates[0]), started(gates[1])
    assert [t.state for t in tickets] == [RUNNING, RUNNING, QUEUED, QUEUED, QUEUED]
    assert [t.ahead for t in tickets] == [0, 0, 2, 3, 4]
    assert scheduler.stats() == {"queued": 3, "running": 2, "capacity": 2}
    gates[1].open.set()
    assert tickets[1].wait(TIMEOUT) and tickets[1].result() == 1
    started(gates[2])  # the first in the queue takes the free slot
    assert not gates[3].started.is_set() and tickets[3].ahead == 2  # jobs 0 and 2 run
    for gate in gates:
        gate.open.set()
    assert [t.result() for t in tickets] == [0, 1, 2, 3, 4]


def test_a_newer_request_replaces_the_sessions_queued_one():
    scheduler = Scheduler(capacity=lambda: 1)
    blocker = Gate("blocker")
    scheduler.submit("blocker", "other", blocker)
    started(blocker)
    old, new = Gate("old"), Gate("new")
    first = scheduler.submit("seed=1", "alice", old)
    second = scheduler.submit("seed=2", "alice", new)  # alice moved the slider again
    assert first.state == CANCELLED and second.state == QUEUED and second.ahead == 1
    with pytest.raises(Cancelled):
        first.result()
    blocker.open.set()
    new.open.set()
    assert second.result() == "new"
    assert not old.started.is_set(), "a replaced queued job never runs"


def test_a_newer_request_stops_the_sessions_running_one_at_its_next_block():
    scheduler = Scheduler(capacity=lambda: 1)
    old = Gate("old", blocks=1000)
    first = scheduler.submit("seed=1", "alice", old)
    started(old)
    new = Gate("new")
    second = scheduler.submit("seed=2", "alice", new)
    old.open.set()
    new.open.set()
    assert second.result() == "new"
    assert first.wait(TIMEOUT) and first.state == CANCELLED and old.stopped_at == 1
    with pytest.raises(Cancelled):
        first.result()


def test_one_key_runs_once_for_every_session_that_asks_and_is_kept():
    scheduler = Scheduler(capacity=lambda: 1)
    calls = []

    def work(should_stop):
        calls.append(1)
        return "digits"

    tickets = [scheduler.submit("default view", f"visitor{i}", work) for i in range(8)]
    assert [t.result() for t in tickets] == ["digits"] * 8
    later = scheduler.submit("default view", "late visitor", work)
    assert later.state == DONE and later.result() == "digits"
    assert len(calls) == 1


def test_a_shared_job_goes_on_while_any_session_still_wants_it():
    scheduler = Scheduler(capacity=lambda: 1)
    gate = Gate("shared", blocks=3)
    alice = scheduler.submit("view", "alice", gate)
    bob = scheduler.submit("view", "bob", gate)
    started(gate)
    alice.cancel()
    gate.open.set()
    assert bob.result() == "shared" and gate.stopped_at is None
    bob.cancel()  # bob's job is done: nothing left to cancel
    assert bob.state == DONE


def test_a_session_that_ends_cancels_its_work():
    scheduler = Scheduler(capacity=lambda: 1)
    gate = Gate("never shown", blocks=1000)
    ticket = scheduler.submit("view", "gone", gate)
    started(gate)
    ticket.cancel()  # what widgets.scheduled does when the session's script is stopped
    gate.open.set()
    assert ticket.wait(TIMEOUT) and ticket.state == CANCELLED and gate.stopped_at == 1


def test_a_failing_job_raises_for_its_waiter_and_is_not_kept():
    scheduler = Scheduler(capacity=lambda: 1)
    attempts = []

    def broken(should_stop):
        attempts.append(1)
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        scheduler.submit("bad", "alice", broken).result()
    with pytest.raises(ValueError):
        scheduler.submit("bad", "alice", broken).result()
    assert len(attempts) == 2, "a failure is not cached: the next request tries again"


def test_progress_follows_the_steps_the_work_reports():
    scheduler = Scheduler(capacity=lambda: 1)
    gate = Gate("done", blocks=4)
    ticket = scheduler.submit("view", "alice", gate, total=4)
    started(gate)
    assert ticket.progress == 0.0
    gate.open.set()
    assert ticket.result() == "done" and ticket.progress == 1.0


def test_what_a_running_job_publishes_every_session_waiting_on_it_reads():
    scheduler = Scheduler(capacity=lambda: 1)
    published, go_on = threading.Event(), threading.Event()

    def work(progress):
        progress.publish("frame 1")
        published.set()
        assert go_on.wait(TIMEOUT)
        progress(1)
        progress.publish("frame 2")
        return "digits"

    alice = scheduler.submit("view", "alice", work, total=1)
    bob = scheduler.submit("view", "bob", work, total=1)  # a second visitor joins the running job
    assert published.wait(TIMEOUT)
    assert alice.snapshot == bob.snapshot == "frame 1"
    go_on.set()
    assert alice.result() == bob.result() == "digits"
    assert alice.snapshot is None, "a finished job keeps its result, not its last snapshot"


def test_capacity_that_drops_holds_new_jobs_back():
    slots = [2]
    scheduler = Scheduler(capacity=lambda: slots[0])
    first, second, third = Gate(1), Gate(2), Gate(3)
    t1 = scheduler.submit("a", "s1", first)
    started(first)
    slots[0] = 1  # a training started and took a core
    t2, t3 = scheduler.submit("b", "s2", second), scheduler.submit("c", "s3", third)
    assert t2.state == QUEUED and t3.state == QUEUED
    first.open.set()
    assert t1.result() == 1
    started(second)
    assert t3.state == QUEUED
    second.open.set(), third.open.set()
    assert t2.result() == 2 and t3.result() == 3


def test_a_request_back_to_a_cancelled_running_key_runs_once_more_and_is_shared():
    """alice moves the slider away and back while the first run is still stopping; bob then asks for
    the same: one new run serves both."""
    scheduler = Scheduler(capacity=lambda: 2)
    first, other, again = Gate("first", blocks=1000), Gate("other"), Gate("again")
    runs = []

    def counted(should_stop):
        runs.append(1)
        return again(should_stop)

    scheduler.submit("seed=1", "alice", first)
    started(first)
    scheduler.submit("seed=2", "alice", other)  # cancels seed=1, which runs on until its next block
    back = scheduler.submit("seed=1", "alice", counted)
    first.open.set()
    other.open.set()
    started(again)  # the new run has other's slot; the cancelled one may still be on its way out
    bob = scheduler.submit("seed=1", "bob", counted)
    again.open.set()
    assert back.result() == "again" and bob.result() == "again"
    assert first.returned.wait(TIMEOUT) and first.stopped_at == 1
    assert len(runs) == 1


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_slot_count_in_the_environment_is_a_clear_error(monkeypatch, raw):
    from ebm.threads import SERVING_SLOTS_ENV, serving_slots

    monkeypatch.setenv(SERVING_SLOTS_ENV, raw)
    with pytest.raises(ValueError, match=r"\$EBM_SERVING_SLOTS must be a whole number >= 1"):
        serving_slots()


def test_the_slot_count_defaults_to_the_usable_cores_and_can_be_set(monkeypatch):
    from ebm.threads import SERVING_SLOTS_ENV, serving_slots, usable_cores

    monkeypatch.delenv(SERVING_SLOTS_ENV, raising=False)
    assert serving_slots() == usable_cores()
    monkeypatch.setenv(SERVING_SLOTS_ENV, "3")
    assert serving_slots() == 3
