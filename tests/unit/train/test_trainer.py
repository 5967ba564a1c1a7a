"""The loop: exact resume, preemption, accumulation, precision, eval, early stop, events."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from prometheus_client import CollectorRegistry

from examples.train import tiny
from kilowatt.errors import SpecError
from kilowatt.meter import Accountant, CounterReader, EnergyMeter
from kilowatt.train import Callback, CheckpointWarning, StepEvent, Trainer
from kilowatt.train.metrics import PrometheusCallback


def _trainer(ckpt: Path | str, **options: Any) -> Trainer:
    extra = {
        k: options.pop(k)
        for k in ("callbacks", "meter", "accountant", "checkpoint_fs")
        if k in options
    }
    defaults: dict[str, Any] = {
        "steps": 30,
        "batch_size": 16,
        "progress": False,
        "log_every": 5,
        "checkpoint": {"url": str(ckpt), "every": "10", "keep_last": 2},
    }
    defaults.update(options)
    extra.setdefault("meter", None)
    return Trainer(
        tiny.make_model,
        tiny.make_optimizer,
        train_data=tiny.make_dataset(),
        loss_fn=tiny.loss_fn,
        scheduler=tiny.make_scheduler,
        **extra,
        **defaults,
    )


def _weights(trainer_result_url: str) -> dict[str, torch.Tensor]:
    state = torch.load(f"{trainer_result_url}/state.pt", weights_only=False)
    return state["model"]


class _Recorder(Callback):
    def __init__(self) -> None:
        self.steps: list[StepEvent] = []
        self.hooks: list[str] = []

    def on_fit_start(self, event: Any) -> None:
        self.hooks.append("start")

    def on_step(self, event: StepEvent) -> None:
        self.steps.append(event)

    def on_eval(self, event: Any) -> None:
        self.hooks.append(f"eval@{event.step}")

    def on_checkpoint(self, event: Any) -> None:
        self.hooks.append(f"ckpt@{event.step}:{event.reason}")

    def on_fit_end(self, result: Any) -> None:
        self.hooks.append("end")


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path: Path) -> None:
    # 30 steps = almost 2 epochs of 16 batches, so the resume lands mid-epoch with shuffling,
    # dropout, momentum and an LR schedule all in play.
    straight = _trainer(tmp_path / "a", steps=45).fit()
    first = _trainer(tmp_path / "b", steps=23).fit()
    assert first.steps == 23
    resumed = _trainer(tmp_path / "b", steps=45).fit()
    assert (resumed.start_step, resumed.steps) == (23, 45)
    _assert_same_weights(_weights(straight.checkpoint_url), _weights(resumed.checkpoint_url))


def test_resume_never_starts_afresh_and_resume_url_must_exist(tmp_path: Path) -> None:
    _trainer(tmp_path / "a", steps=10).fit()
    again = _trainer(tmp_path / "a", steps=10, resume="never").fit()
    assert again.start_step == 0
    with pytest.raises(SpecError, match=r"no valid checkpoint at .*nowhere"):
        _trainer(tmp_path / "c", resume=str(tmp_path / "nowhere")).fit()
    from_other = _trainer(tmp_path / "c", steps=12, resume=str(tmp_path / "a")).fit()
    assert from_other.start_step == 10


def test_corrupted_newest_checkpoint_resumes_from_the_previous(tmp_path: Path) -> None:
    _trainer(
        tmp_path, steps=20, checkpoint={"url": str(tmp_path), "every": "5", "keep_last": 3}
    ).fit()
    state = tmp_path / "step-000000020" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    with pytest.warns(CheckpointWarning, match="step-000000020"):
        result = _trainer(tmp_path, steps=20).fit()
    assert result.start_step == 15


class _SignalAt(Callback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_step(self, event: StepEvent) -> None:
        if event.step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_stops_and_resumes_exactly(tmp_path: Path, signum: int) -> None:
    straight = _trainer(tmp_path / "a").fit()
    stopped = _trainer(tmp_path / "b", log_every=1, callbacks=[_SignalAt(13, signum)]).fit()
    assert stopped.preempted and stopped.steps == 13
    assert stopped.checkpoint_url.endswith("step-000000013")
    assert signal.getsignal(signum) is not None  # handlers restored
    resumed = _trainer(tmp_path / "b").fit()
    assert resumed.start_step == 13 and not resumed.preempted
    _assert_same_weights(_weights(straight.checkpoint_url), _weights(resumed.checkpoint_url))


class _GatedMemory(MemoryFileSystem):
    """A checkpoint store whose writes block until the test opens ``gate``."""

    protocol = "gatedtrain"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.writing = threading.Event(), threading.Event()

    def pipe_file(self, path, value, **kwargs):  # type: ignore[override]
        self.writing.set()
        assert self.gate.wait(timeout=120), "test never opened the gate"
        return super().pipe_file(path, value, **kwargs)


class _OpenGateAt(Callback):
    """Records the steps that run while the first checkpoint is stuck in storage."""

    def __init__(self, fs: _GatedMemory, step: int) -> None:
        self.fs, self.step = fs, step
        self.steps_during_write: list[int] = []

    def on_step(self, event: StepEvent) -> None:
        if event.step == 6:  # the step-5 checkpoint was handed over just before this step
            assert self.fs.writing.wait(timeout=60)
        if self.fs.writing.is_set() and not self.fs.gate.is_set():
            self.steps_during_write.append(event.step)
        if event.step == self.step:
            self.fs.gate.set()


def test_step_loop_keeps_running_while_a_slow_store_writes() -> None:
    fs = _GatedMemory()
    watcher = _OpenGateAt(fs, step=9)
    result = _trainer(
        "memory://slow-train",
        steps=20,
        log_every=1,
        checkpoint={"url": "memory://slow-train", "every": "5", "keep_last": 5},
        checkpoint_fs=fs,
        callbacks=[watcher],
    ).fit()
    # The step-5 checkpoint sat in storage until step 9, and the loop ran on meanwhile.
    assert watcher.steps_during_write == [6, 7, 8, 9]
    assert result.steps == 20
    assert fs.exists("/slow-train/step-000000020/manifest-rank-0.json")


def test_gradient_accumulation_matches_one_large_batch(tmp_path: Path) -> None:
    common = {"shuffle": False, "steps": 8, "checkpoint": {"url": str(tmp_path), "every": "100"}}
    model_a, model_b = tiny.make_model(), tiny.make_model()
    model_b.load_state_dict(model_a.state_dict())
    for model in (model_a, model_b):
        model[2].p = 0.0  # no dropout: the two runs must see the same function
    big = Trainer(
        model_a,
        train_data=tiny.make_dataset(),
        loss_fn=tiny.loss_fn,
        meter=None,
        progress=False,
        batch_size=16,
        resume="never",
        **common,
    )
    small = Trainer(
        model_b,
        train_data=tiny.make_dataset(),
        loss_fn=tiny.loss_fn,
        meter=None,
        progress=False,
        batch_size=8,
        grad_accum=2,
        resume="never",
        **common,
    )
    big.fit()
    small.fit()
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_eval_early_stop_and_events(tmp_path: Path) -> None:
    recorder = _Recorder()
    result = _trainer(
        tmp_path,
        steps=400,
        eval_every=10,
        eval_data=tiny.make_eval_dataset(),
        early_stop={"patience": 1, "min_delta": 10.0},  # nothing improves by 10
        callbacks=[recorder],
    ).fit()
    assert result.stopped_early and result.steps == 20
    # the first evaluation sets the best; the second fails to beat it and stops the run
    assert recorder.hooks == [
        "start",
        "eval@10",
        "ckpt@10:interval",
        "eval@20",
        "ckpt@20:final",
        "end",
    ]
    assert "eval_loss" in result.eval_metrics
    assert [e.step for e in recorder.steps] == [5, 10, 15, 20]


def test_metering_and_accounting_reach_the_result(tmp_path: Path) -> None:
    joules = iter(range(0, 10**6, 100))  # every read adds 100 J
    meter = lambda: EnergyMeter([CounterReader(lambda: float(next(joules)))])  # noqa: E731
    acct = Accountant(price_usd_per_hour=3.6, grid_intensity_gco2e_per_kwh=360.0)
    recorder = _Recorder()
    result = _trainer(tmp_path, steps=10, meter=meter, accountant=acct, callbacks=[recorder]).fit()
    assert result.measurement is not None and result.account is not None
    # reads: begin_window, 2 log intervals (steps 5 and 10), end_window; the sampler's
    # first tick also reads once, so the window spans 4 or more 100 J increments
    assert result.measurement.energy_j >= 300.0
    assert result.measurement.method == "measured-nvml"
    assert result.account.carbon_gco2e == pytest.approx(result.measurement.energy_j / 1e4)
    assert result.measurement.energy_j % 100.0 == 0.0
    # $3.6/h is $0.001/s
    assert result.account.cost_usd == pytest.approx(result.measurement.duration_s / 1000.0)
    assert all(e.power_w is not None and e.power_w > 0 for e in recorder.steps)


def test_figures_per_step_event(tmp_path: Path) -> None:
    recorder = _Recorder()
    _trainer(
        tmp_path, steps=10, model_flops_per_sample=1000.0, peak_flops=1e9, callbacks=[recorder]
    ).fit()
    event = recorder.steps[-1]
    assert event.samples_per_s == pytest.approx(16 / event.step_time_s)
    assert event.flops_per_s == pytest.approx(1000.0 * event.samples_per_s)
    assert event.mfu == pytest.approx(event.flops_per_s / 1e9)


def test_bf16_mixed_runs_on_cpu_and_fp16_asks_for_cuda(tmp_path: Path) -> None:
    result = _trainer(tmp_path / "bf16", steps=5, precision="bf16-mixed").fit()
    assert result.final_loss is not None and result.final_loss > 0
    with pytest.raises(SpecError, match="fp16-mixed needs a CUDA device; use bf16-mixed"):
        _trainer(tmp_path / "fp16", steps=5, precision="fp16-mixed").fit()


class _Broken(Callback):
    def on_step(self, event: StepEvent) -> None:
        raise RuntimeError("tracker is down")


def test_a_failing_callback_does_not_stop_training(tmp_path: Path, caplog: Any) -> None:
    result = _trainer(tmp_path, steps=10, callbacks=[_Broken()]).fit()
    assert result.steps == 10
    assert "on_step failed; training continues" in caplog.text


def test_prometheus_callback_exposes_training_gauges(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    _trainer(tmp_path, steps=10, callbacks=[PrometheusCallback(registry=registry)]).fit()
    assert registry.get_sample_value("kilowatt_train_step") == 10.0
    assert registry.get_sample_value("kilowatt_train_samples_per_second") > 0
    assert registry.get_sample_value("kilowatt_train_loss") > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ({"lr": 0.1}, "lr: unknown key"),  # a typo'd option must not be ignored
        ({"checkpoint": {"every": "often"}}, "'often' is not understood"),
    ],
)
def test_bad_options_are_spec_errors(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _trainer(tmp_path, **options)


def test_data_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="256 samples, fewer than one batch of 512"):
        _trainer(tmp_path, batch_size=512).fit()
    odd = Trainer(
        tiny.make_model,
        train_data=lambda b, r, w: iter([torch.zeros(4, 8)] * 3),
        loss_fn=tiny.loss_fn,
        meter=None,
        progress=False,
        resume="never",
        checkpoint={"url": str(tmp_path / "odd")},
    )
    with pytest.raises(SpecError, match="batches \\(inputs, targets\\), got Tensor"):
        odd.fit()


def test_training_step_and_loader_factory(tmp_path: Path) -> None:
    trainer = Trainer(
        tiny.make_model,
        tiny.make_optimizer,
        train_data=tiny.make_dataloader,
        training_step=tiny.training_step,
        meter=None,
        progress=False,
        steps=40,  # 256 / 16 = 16 batches per epoch: crosses two epoch boundaries
        batch_size=16,
        checkpoint={"url": str(tmp_path), "every": "100"},
    )
    result = trainer.fit()
    assert result.steps == 40 and result.final_loss < 1.0


def test_fsdp_on_cpu_asks_for_cuda_or_ddp() -> None:
    from kilowatt.train.sharding import wrap_fsdp

    with pytest.raises(SpecError, match="fsdp: true needs CUDA devices; on CPU set fsdp: false"):
        wrap_fsdp(tiny.make_model(), torch.device("cpu"))


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_logged_loss_is_the_mean_of_the_interval(tmp_path: Path, grad_accum: int) -> None:
    # The loss is summed on the device and read only when logged; what is logged must still
    # be the mean of every micro-batch's loss since the previous log.
    seen: list[float] = []

    def training_step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        loss = tiny.loss_fn(model(inputs), targets)
        seen.append(float(loss.detach()))
        return loss

    recorder = _Recorder()
    Trainer(
        tiny.make_model,
        tiny.make_optimizer,
        train_data=tiny.make_dataset(),
        training_step=training_step,
        meter=None,
        progress=False,
        batch_size=8,
        grad_accum=grad_accum,
        steps=10,
        log_every=5,
        resume="never",
        checkpoint={"url": str(tmp_path), "every": "100"},
        callbacks=[recorder],
    ).fit()
    per_log = 5 * grad_accum
    expected = [sum(seen[i : i + per_log]) / per_log for i in range(0, len(seen), per_log)]
    assert len(expected) == 2
    assert [event.loss for event in recorder.steps] == pytest.approx(expected, rel=1e-6)
