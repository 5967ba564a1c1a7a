"""Metric points: idempotent batches, history reads, NaN policy, concurrency, crashes."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import kilowatt
from kilowatt.errors import SpecError
from kilowatt.store import Store

WRITER = str(Path(__file__).with_name("metric_writer.py"))


def test_history_is_sorted_by_step_with_times(store: Store) -> None:
    run = store.create_run("m")
    store.log_metric_points(run.id, "w", [("loss", 2, 30.0, 0.2), ("loss", 0, 10.0, 1.0)])
    store.log_metric_points(run.id, "w", [("loss", 1, 20.0, 0.5), ("acc", 0, 10.0, 0.1)])
    history = store.metric_history(run.id, "loss")
    assert history.step.tolist() == [0, 1, 2]
    assert history.value.tolist() == [1.0, 0.5, 0.2]
    assert history.time.tolist() == [10.0, 20.0, 30.0]
    assert history.step.dtype == np.int64 and history.last == pytest.approx(0.2)
    assert store.metric_keys(run.id) == ["acc", "loss"]
    assert store.latest_metrics(run.id) == {"acc": 0.1, "loss": 0.2}
    assert len(store.metric_history(run.id, "missing")) == 0


def test_resending_a_batch_stores_each_point_once(store: Store) -> None:
    run = store.create_run("m")
    batch = [("loss", step, float(step), step / 10) for step in range(100)]
    store.log_metric_points(run.id, "rank0", batch)
    store.log_metric_points(run.id, "rank0", batch)  # a retry after an unclear failure
    assert store.count_metric_points(run.id) == 100


def test_same_step_again_from_one_writer_keeps_the_last_value(store: Store) -> None:
    run = store.create_run("m")
    store.log_metric_points(run.id, "w", [("loss", 5, 1.0, 0.9)])
    store.log_metric_points(run.id, "w", [("loss", 5, 2.0, 0.4)])
    assert store.metric_history(run.id, "loss").value.tolist() == [0.4]


def test_nan_and_inf_are_kept_as_logged(store: Store) -> None:
    with kilowatt.start_run(project="m", store=store) as run:
        run.log_metrics({"loss": float("nan")}, step=0)
        run.log_metrics({"loss": float("inf")}, step=1)
        run.log_metrics({"loss": np.float32(-math.inf)}, step=2)
    values = store.metric_history(run.id, "loss").value
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf


def test_non_numbers_are_refused_naming_the_key(store: Store) -> None:
    with kilowatt.start_run(project="m", store=store) as run:
        with pytest.raises(SpecError, match=r"metric 'lr' got text '0.1'; log a number"):
            run.log_metrics({"lr": "0.1"})
        with pytest.raises(SpecError, match=r"metric 'cfg' got \{\}, which is not a number"):
            run.log_metrics({"cfg": {}})


def test_steps_default_to_one_past_the_last_per_key(store: Store) -> None:
    with kilowatt.start_run(project="m", store=store) as run:
        run.log_metric("loss", 3.0)
        run.log_metric("loss", 2.0)
        run.log_metrics({"loss": 1.0}, step=10)
        run.log_metric("loss", 0.5)
    assert store.metric_history(run.id, "loss").step.tolist() == [0, 1, 10, 11]


def test_points_are_written_by_the_background_flusher_without_flush(store: Store) -> None:
    with kilowatt.start_run(project="m", store=store, flush_interval_s=0.01) as run:
        run.log_metrics({"loss": 1.0}, step=0)
        # wait on the flusher, bounded by the test timeout: it must write on its own
        while store.count_metric_points(run.id) == 0:
            run._wake.set()
        assert store.count_metric_points(run.id) == 1


@pytest.mark.slow
def test_four_processes_log_ten_thousand_points_each_exactly_once(
    store: Store, store_url: str
) -> None:
    run = store.create_run("ddp")
    children = [
        subprocess.Popen(
            [sys.executable, WRITER, store_url, run.id, f"rank{rank}", "10000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(4)
    ]
    try:
        outputs = [child.communicate(timeout=240)[0] for child in children]
    finally:
        for child in children:
            child.kill()
    assert [child.returncode for child in children] == [0, 0, 0, 0]
    assert all(out.strip().endswith("done") for out in outputs)
    assert store.count_metric_points(run.id, "loss") == 40_000
    assert store.count_metric_points(run.id) == 80_000
    history = store.metric_history(run.id, "loss")
    # each step holds exactly one point per rank, with the value that rank logged
    assert np.array_equal(history.step, np.repeat(np.arange(10_000), 4))
    assert np.array_equal(history.value, np.repeat(np.arange(10_000) * 0.5, 4))


def test_sigkill_mid_logging_loses_only_the_unflushed_window(store: Store, store_url: str) -> None:
    run = store.create_run("crash")
    command = [sys.executable, WRITER, store_url, run.id, "rank0", "10000000", "1000"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            flushed = 0
            while flushed < 5000:
                line = child.stdout.readline()
                assert line.startswith("flushed"), f"writer died early: {line!r}"
                flushed = int(line.split()[1])
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        finally:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    history = store.metric_history(run.id, "loss")
    # everything flushed before the kill is there, as one unbroken prefix of steps
    assert len(history) >= flushed
    assert np.array_equal(history.step, np.arange(len(history)))
    assert np.array_equal(history.value, np.arange(len(history)) * 0.5)
    assert store.get_run(run.id).status == "running"  # nobody could finish it
    if store_url.startswith("sqlite"):
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    with store.engine.connect() as connection:  # the database still takes writes
        assert connection.execute(sa.text("SELECT COUNT(*) FROM runs")).scalar() == 1
    store.finish_run(run.id, "killed")
