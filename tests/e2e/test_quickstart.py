"""`kilowatt quickstart` end to end, as a user runs it: the report's numbers, what the store
holds afterwards, a second run, and Ctrl-C leaving no process behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kilowatt.cli.quickstart.html import bar_chart_svg, line_chart_svg
from kilowatt.cli.quickstart.serving import LatencyBucket, _buckets

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
_ENTRY = "import sys; from kilowatt.cli.main import main; sys.exit(main())"
KILOWATT = [sys.executable, "-c", _ENTRY]
#: The digits CNN passes 96% after the 150 steps of --fast; 85% leaves room for a noisy
#: machine without letting a model that learned nothing (10%) through.
ACCURACY_FLOOR = 0.85
_SERVER_STARTED = re.compile(r"server started: .* \(pid (\d+)\) at (http://127\.0\.0\.1:\d+)")


def _quickstart(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KILOWATT, "quickstart", *args], cwd=REPO, capture_output=True, text=True, timeout=280
    )


def _figure(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the report:\n{text}"
    return float(match.group(1).replace(",", ""))


def test_fast_quickstart_reports_plausible_numbers_and_fills_the_store(
    clean_environment: Path,
) -> None:
    from kilowatt.store import open_store

    done = _quickstart("--fast")
    out = done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    # 1 plan, 2 train, ..., 6 HTML: every step announced in order.
    positions = [out.index(f"{n}/6 ") for n in range(1, 7)]
    assert positions == sorted(positions)
    assert "quickstart-digits: training plans by time" in out
    assert _figure(r"accuracy\s*│\s*([\d.]+)%", out) / 100 >= ACCURACY_FLOOR
    assert _figure(r"energy\s*│\s*([\d.]+) J", out) > 0
    assert "estimated-cpu-time" in out or "measured-rapl" in out  # the energy's method
    assert "catalog-price:quickstart-core" in out  # the cost's method
    assert _figure(r"p99 latency\s*│\s*([\d.]+) ms", out) > 0
    assert _figure(r"throughput\s*│\s*([\d,]+) requests/s", out) > 0
    assert re.search(r"│ time\s*│\s*[\d.]+ s\s*│\s*[\d.]+ s\s*│\s*[\d.]+x", out)  # plan vs run
    assert "a held-out 6 is read as 6 (correct)" in out
    assert "kilowatt ui" in out
    assert "MFU of 25.000% (catalog default)" in out  # nothing measured yet
    html_report = re.search(r"HTML report: (\S+)", out)
    assert html_report, out
    html_path = Path(html_report[1])
    assert html_path.is_relative_to(clean_environment)
    page = html_path.read_text()
    assert page.count("<svg") == 2 and "<polyline" in page and "<rect" in page

    with open_store() as store:
        (run,) = store.list_runs("quickstart")
        assert run.status == "finished" and run.energy_j and run.energy_j > 0
        version = store.get_model_version("quickstart-digits:1")
        assert version.run_id == run.id
        (deployment,) = store.list_deployments("quickstart-digits")
        assert deployment.model_version_id == version.id and deployment.status == "stopped"
        graph = store.lineage_of(version)
    edges = {(edge.src, edge.dst) for edge in graph.edges}
    dataset = store_dataset_key(graph)
    assert edges == {
        (dataset, ("run", run.id)),
        (("run", run.id), ("model_version", str(version.id))),
        (("model_version", str(version.id)), ("deployment", str(deployment.id))),
    }
    assert graph.nodes[dataset].label.startswith("sklearn-digits:")
    with open_store() as store:  # the training read that data set through kilowatt's loader
        assert "data_wait_s" in store.latest_metrics(run.id)

    # A second run is a second run: a new run, the next version, another deployment.
    again = _quickstart("--steps", "20", "--load-seconds", "0.2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "registered quickstart-digits:2" in again.stdout
    with open_store() as store:
        assert len(store.list_runs("quickstart")) == 2
        assert [d.status for d in store.list_deployments("quickstart-digits")] == ["stopped"] * 2
        second = store.lineage_of(store.get_model_version("quickstart-digits:2"))
    assert store_dataset_key(second) == dataset  # the same content reuses its version
    # The first run's measured MFU now feeds the plan.
    assert "(calibration) on" in again.stdout


def store_dataset_key(graph: object) -> tuple[str, str]:
    (key,) = [key for key in graph.nodes if key[0] == "dataset"]  # type: ignore[attr-defined]
    return key


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KILOWATT, "quickstart", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(process: subprocess.Popen[str], pattern: re.Pattern[str]) -> re.Match[str]:
    seen = []
    assert process.stdout is not None
    for line in process.stdout:  # bounded by the test timeout if the line never comes
        seen.append(line)
        if match := pattern.search(line):
            return match
    raise AssertionError("the line never came; output:\n" + "".join(seen))


def test_ctrl_c_while_serving_stops_the_server_and_leaves_no_process() -> None:
    process = _start("--fast", "--load-seconds", "60")
    try:
        started = _read_until(process, _SERVER_STARTED)
        server_pid = int(started[1])
        children = psutil.Process(process.pid).children(recursive=True)
        assert server_pid in {child.pid for child in children}
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, rest
    assert "interrupted" in rest
    for child in children:
        assert not child.is_running(), f"{child.pid} outlived the quickstart"
    assert not psutil.pid_exists(server_pid)


def _wait_for_logged_loss(process: subprocess.Popen[str]) -> None:
    """Wait until the run's first loss points reach the store (training is under way)."""
    from kilowatt.store import open_store

    deadline = time.monotonic() + 120
    with open_store() as store:
        while True:
            assert process.poll() is None, "the quickstart ended before training"
            assert time.monotonic() < deadline, "no loss was logged within 120 s"
            runs = store.list_runs("quickstart")
            if runs and store.count_metric_points(runs[0].id, "loss") > 0:
                return
            time.sleep(0.2)


def test_ctrl_c_while_training_checkpoints_and_marks_the_run_killed() -> None:
    from kilowatt.store import open_store

    process = _start("--steps", "100000")
    try:
        _wait_for_logged_loss(process)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, rest
    assert re.search(r"interrupted: training stopped at step \d+ \(checkpointed\)", rest)
    with open_store() as store:
        runs = store.list_runs("quickstart")
    assert [run.status for run in runs] == ["killed"]


def test_prometheus_buckets_become_a_histogram_and_plots() -> None:
    # Cumulative counts per upper bound, as /metrics gives them.
    buckets = _buckets({0.001: 2.0, 0.002: 5.0, 0.005: 5.0, float("inf"): 6.0})
    assert buckets == [
        LatencyBucket(0.0, 0.001, 2),
        LatencyBucket(0.001, 0.002, 3),
        LatencyBucket(0.002, 0.005, 0),
        LatencyBucket(0.005, float("inf"), 1),
    ]
    svg = bar_chart_svg(buckets, "latency", "requests")
    assert svg.count("<rect") == 4 and "&#8804;1 ms" in svg and ">3</text>" in svg
    assert "no requests" in bar_chart_svg([LatencyBucket(0, 1, 0)], "latency", "requests")
    curve = line_chart_svg([("loss", [(0, 2.3), (10, 0.01)])], "step", "loss")
    assert "(log)" in curve  # 230x range: a log axis
