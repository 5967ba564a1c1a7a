"""One rank's training loop: set up, restore, step, log, evaluate, checkpoint, stop."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from kilowatt.errors import SpecError
from kilowatt.meter import EnergyMeter, PowerSampler
from kilowatt.signals import handling_signals
from kilowatt.spec.train import parse_interval, young_daly_interval_s
from kilowatt.train.batches import BatchStream, eval_batches, move_to
from kilowatt.train.callbacks import (
    CallbackRunner,
    CheckpointEvent,
    EvalEvent,
    EventLog,
    FitResult,
    FitStart,
    ProgressCallback,
    StepEvent,
)
from kilowatt.train.checkpoint import CheckpointManager
from kilowatt.train.sharding import full_state, load_full_state, wrap_fsdp
from kilowatt.train.state import capture_rng, restore_rng, seed_everything

if TYPE_CHECKING:
    from kilowatt.train.trainer import Trainer

__all__ = ["Loop"]


class _Interval:
    """When to checkpoint: every N steps, every N seconds, or Young/Daly from measured cost."""

    def __init__(self, text: str, mtbf_s: float) -> None:
        self.kind, self.value = parse_interval(text)
        self.mtbf_s = mtbf_s
        # Before the first cost is measured, ``auto`` checkpoints after 1% of the MTBF.
        self.period_s = self.value if self.kind == "seconds" else mtbf_s / 100.0
        self.last_step, self.last_s = 0, time.monotonic()

    def due(self, step: int) -> bool:
        if self.kind == "steps":
            return step - self.last_step >= self.value
        return time.monotonic() - self.last_s >= self.period_s

    def saved(self, step: int, stall_s: float, write_s: float) -> None:
        self.last_step, self.last_s = step, time.monotonic()
        if self.kind == "auto":
            # The loop pays the stall; a new save cannot start before the last write ends.
            self.period_s = max(young_daly_interval_s(stall_s, self.mtbf_s), write_s)


class _Preemption:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        self.signum = signum


class Loop:
    """The loop of one rank; ``Trainer.fit_rank`` builds and runs it."""

    def __init__(self, trainer: Trainer) -> None:
        self.t, self.o = trainer, trainer.options
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world_size = dist.get_world_size() if distributed else 1
        self.device = resolve_device(self.o.device, self.rank)
        self.global_batch = self.o.batch_size * self.o.grad_accum * self.world_size
        self.events = CallbackRunner(self._callbacks() if self.rank == 0 else [])
        self.step, self.loss_count = 0, 0
        self.last_loss: float | None = None
        self.eval_metrics: dict[str, float] = {}
        self.best: float | None = None
        self.bad_evals = 0

    def _callbacks(self) -> list[Any]:
        callbacks = list(self.t.callbacks)
        if self.o.progress:
            callbacks.insert(0, ProgressCallback())
        if self.o.event_log:
            callbacks.append(EventLog(self.o.event_log))
        return callbacks

    # --- set-up

    def _setup(self) -> None:
        seed_everything(self.o.seed)
        self.raw_model = self.t.build_model().to(self.device)
        self.parameter_count = sum(p.numel() for p in self.raw_model.parameters())
        self.sharded = self.o.fsdp and self.world_size > 1
        if self.sharded:  # FSDP flattens parameters: the optimizer must see the sharded ones
            self.model = wrap_fsdp(self.raw_model, self.device)
            self.optimizer = self.t.build_optimizer(self.model)
        else:
            self.optimizer = self.t.build_optimizer(self.raw_model)
            self.model = self._wrap(self.raw_model)
        self.scheduler = self.t.scheduler(self.optimizer) if self.t.scheduler else None
        self.autocast, self.scaler = _precision(self.o.precision, self.device)
        # Found by profiling the per-step path: a disabled scaler, a move to the CPU of
        # tensors already there, and an in-place add per step each cost a dispatch for
        # nothing; they are skipped when they would do nothing.
        self.scaling = self.scaler.is_enabled()
        self.move_batches = self.device.type != "cpu"  # the loader yields CPU tensors
        # The losses stay where they live and are read only when logged: reading a device
        # tensor every step would make the host wait for the device every step.
        self.losses: list[torch.Tensor] = []
        self.checkpoints = make_checkpoint_manager(self.t, self.rank, self.world_size)
        self.data = BatchStream(
            self.t.train_data,
            self.o.batch_size,
            self.rank,
            self.world_size,
            seed=self.o.seed,
            shuffle=self.o.shuffle,
        )
        self._restore()
        # Each rank draws its own dropout masks; resumed runs restored theirs above.
        if self.step == 0:
            seed_everything(self.o.seed + self.rank)
        self.meter: EnergyMeter | None = self.t.meter_factory() if self.t.meter_factory else None

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def _restore(self) -> None:
        resume = self.o.resume
        if resume == "never":
            return
        # ``auto`` looks in this run's own location; anything else names a location whose
        # newest valid checkpoint must exist. New checkpoints always go to this run's own.
        source = self.checkpoints
        if resume != "auto":
            source = make_checkpoint_manager(self.t, self.rank, self.world_size, url=resume)
        info = source.latest()
        if info is None:
            if resume != "auto":
                raise SpecError(f"resume: no valid checkpoint at {resume}; check the URL")
            return
        state, rank_state = source.load(info)
        assert state is not None  # rank 0's state.pt is part of every valid checkpoint
        if self.sharded:
            load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        loop_state = state.get("loop", {})
        self.best, self.bad_evals = loop_state.get("best"), loop_state.get("bad_evals", 0)
        self.eval_metrics = loop_state.get("eval_metrics", {})
        self.data.restore(rank_state["data"])
        restore_rng(rank_state["rng"])

    # --- the loop

    def run(self) -> FitResult:
        self._setup()
        start_step = self.step
        interval = _Interval(
            self.o.checkpoint.every, self.o.checkpoint.expected_preemption_interval_s
        )
        interval.last_step = start_step
        sampler = start_sampler(self.meter) if self.rank == 0 else None
        stall_s, saves, last_url = 0.0, 0, None
        stopped_early = preempted = False
        self.events.emit("on_fit_start", self._fit_start(start_step))
        if self.meter is not None:
            self.meter.begin_window("fit")
        started_s = log_s = time.perf_counter()
        log_step, log_energy_j = self.step, self._energy_j()
        # Read once: between two steps the loop does only these compares unless one is due.
        steps, log_every = self.o.steps, self.o.log_every
        eval_every = self.o.eval_every if self.t.eval_data is not None else None
        self.model.train()
        try:
            preemption = _Preemption()
            with handling_signals(preemption.handle):
                while self.step < steps:
                    self._train_step()
                    step = self.step
                    if step % log_every == 0 or step == steps:
                        now_s, energy_j = time.perf_counter(), self._energy_j()
                        used_j = None if energy_j is None else energy_j - (log_energy_j or 0.0)
                        self._log(step - log_step, now_s - log_s, used_j)
                        log_s, log_step, log_energy_j = now_s, step, energy_j
                    if eval_every is not None and (step % eval_every == 0 or step == steps):
                        stopped_early = self._evaluate()
                    signalled = preemption.signum is not None
                    if self.world_size > 1:  # every rank must stop at the same step
                        signalled = self._agree(signalled)
                    if signalled:
                        preempted = True
                        break
                    if stopped_early:
                        break
                    if step < steps and interval.due(step):
                        report = self._save("interval")
                        interval.saved(self.step, report[0], self.checkpoints.last_write_s)
                        stall_s, saves, last_url = stall_s + report[0], saves + 1, report[1]
                # Still inside the handlers: a second signal must not cut the last save short.
                report = self._save("preempted" if preempted else "final")
                self.checkpoints.wait()  # the last checkpoint must be on storage before exit
                stall_s, saves, last_url = stall_s + report[0], saves + 1, report[1]
        finally:
            if sampler is not None:
                sampler.stop()
            self.checkpoints.close()
        duration_s = time.perf_counter() - started_s
        result = self._result(start_step, duration_s, preempted, stopped_early)
        result = _replace(
            result, checkpoint_url=last_url, checkpoint_stall_s=stall_s, checkpoints=saves
        )
        self.events.emit("on_fit_end", result)
        return result

    def _train_step(self) -> None:
        for micro in range(self.o.grad_accum):
            batch = next(self.data)
            if self.move_batches:
                batch = move_to(batch, self.device)
            if micro < self.o.grad_accum - 1 and self.world_size > 1:
                # Gradients are all-reduced once per optimizer step, not per micro-batch.
                with self.model.no_sync():  # type: ignore[operator]
                    loss = self._backward(batch)
            else:
                loss = self._backward(batch)
            self.losses.append(loss.detach())
        if self.o.clip_grad_norm is not None:
            if self.scaling:
                self.scaler.unscale_(self.optimizer)
            if self.sharded:  # each rank holds a shard; FSDP computes the global norm
                self.model.clip_grad_norm_(self.o.clip_grad_norm)  # type: ignore[operator]
            else:
                torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.o.clip_grad_norm)
        if self.scaling:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        self.loss_count += 1

    def _backward(self, batch: Any) -> torch.Tensor:
        """Forward and backward of one micro-batch; its (scaled-down) loss."""
        with self.autocast():
            loss = self.t.compute_loss(self.model, batch)
            if self.o.grad_accum > 1:  # one more autograd node only when it matters
                loss = loss / self.o.grad_accum
        (self.scaler.scale(loss) if self.scaling else loss).backward()
        return loss

    def _log(self, steps: int, elapsed_s: float, energy_j: float | None) -> None:
        # Reading the loss is a device sync point, so it happens only every log_every steps.
        total = torch.stack(self.losses).sum() if self.losses else torch.zeros(())
        self.last_loss = float(total) / max(1, self.loss_count)
        self.losses.clear()
        self.loss_count = 0
        if self.rank != 0 or steps == 0:
            return
        samples_per_s = steps * self.global_batch / elapsed_s if elapsed_s > 0 else 0.0
        flops = self.o.model_flops_per_sample
        flops_per_s = flops * samples_per_s if flops else None
        event = StepEvent(
            step=self.step,
            epoch=self.data.epoch,
            loss=self.last_loss,
            lr=float(self.optimizer.param_groups[0]["lr"]),
            step_time_s=elapsed_s / steps,
            samples_per_s=samples_per_s,
            flops_per_s=flops_per_s,
            mfu=flops_per_s / self.o.peak_flops if flops_per_s and self.o.peak_flops else None,
            power_w=energy_j / elapsed_s if energy_j is not None and elapsed_s > 0 else None,
            data=self.data.metrics(),
        )
        self.events.emit("on_step", event)

    def _energy_j(self) -> float | None:
        return self.meter.energy_j() if self.meter is not None else None

    # --- evaluation and early stop

    @torch.no_grad()
    def _evaluate(self) -> bool:
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64)
        batches = eval_batches(self.t.eval_data, self.o.batch_size, self.rank, self.world_size)
        for index, batch in enumerate(batches):
            if self.o.eval_batches is not None and index >= self.o.eval_batches:
                break
            batch = move_to(batch, self.device)
            with self.autocast():
                loss = self.t.compute_loss(self.model, batch)
            size = _batch_size(batch)
            total += torch.tensor([float(loss) * size, size], dtype=torch.float64)
        self.model.train()
        if self.world_size > 1:
            dist.all_reduce(total)
        self.eval_metrics = {"eval_loss": float(total[0] / total[1]) if total[1] else float("nan")}
        self.events.emit("on_eval", EvalEvent(self.step, dict(self.eval_metrics)))
        return self._early_stop()

    def _early_stop(self) -> bool:
        rule = self.o.early_stop
        if rule is None or rule.metric not in self.eval_metrics:
            return False
        value = self.eval_metrics[rule.metric]
        sign = 1.0 if rule.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > rule.min_delta:
            self.best, self.bad_evals = value, 0
            return False
        self.bad_evals += 1
        return self.bad_evals >= rule.patience

    # --- checkpoints and preemption

    def _agree(self, flag: bool) -> bool:
        """Whether any rank was signalled (a collective: every rank calls it each step)."""
        vote = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return bool(vote.item() > 0)

    def _save(self, reason: str) -> tuple[float, str]:
        if self.sharded:  # a collective: every rank gathers, rank 0 keeps the result
            model_state, optimizer_state = full_state(self.model, self.optimizer)
        elif self.rank == 0:
            model_state, optimizer_state = self.raw_model.state_dict(), self.optimizer.state_dict()
        state = None
        if self.rank == 0:
            state = {
                "model": model_state,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "loop": {
                    "best": self.best,
                    "bad_evals": self.bad_evals,
                    "eval_metrics": dict(self.eval_metrics),
                },
            }
        rank_state = {"rng": capture_rng(), "data": self.data.position(), "step": self.step}
        report = self.checkpoints.save(self.step, state, rank_state, dict(self.eval_metrics))
        url = f"{self.checkpoints.url}/step-{self.step:09d}"
        self.events.emit(
            "on_checkpoint",
            CheckpointEvent(self.step, url, report.stall_s, report.asynchronous, reason),
        )
        return report.stall_s, url

    # --- reporting

    def _fit_start(self, start_step: int) -> FitStart:
        return FitStart(
            total_steps=self.o.steps,
            start_step=start_step,
            world_size=self.world_size,
            global_batch_size=self.global_batch,
            device=str(self.device),
            precision=self.o.precision,
            params=self.o.model_dump(mode="json"),
            parameter_count=self.parameter_count,
        )

    def _result(
        self, start_step: int, duration_s: float, preempted: bool, stopped_early: bool
    ) -> FitResult:
        steps_run = self.step - start_step
        samples = steps_run * self.global_batch
        measurement = self.meter.end_window("fit") if self.meter is not None else None
        if measurement is not None and self.world_size > 1:
            measurement = _sum_over_ranks(measurement, self.device)
        samples_per_s = samples / duration_s if duration_s > 0 else 0.0
        flops = self.o.model_flops_per_sample
        flops_per_s = flops * samples_per_s if flops else None
        account = None
        if measurement is not None and self.t.accountant is not None:
            account = self.t.accountant.account(measurement)
        return FitResult(
            steps=self.step,
            start_step=start_step,
            final_loss=self.last_loss,
            eval_metrics=dict(self.eval_metrics),
            duration_s=duration_s,
            samples=samples,
            samples_per_s=samples_per_s,
            step_time_s=duration_s / steps_run if steps_run else 0.0,
            flops_per_s=flops_per_s,
            mfu=flops_per_s / self.o.peak_flops if flops_per_s and self.o.peak_flops else None,
            peak_memory_bytes=peak_memory_bytes(self.device),
            measurement=measurement,
            account=account,
            preempted=preempted,
            stopped_early=stopped_early,
            data=self.data.metrics(),
        )


def _precision(precision: str, device: torch.device) -> tuple[Any, torch.amp.GradScaler]:
    """An autocast context factory and a grad scaler for ``precision`` on ``device``."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        # TF32 matmuls on Ampere and newer: fp32 range, ~8x the throughput, tiny precision cost.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision == "fp32":
        return contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False)
    if precision == "fp16-mixed" and device.type != "cuda":
        raise SpecError("precision fp16-mixed needs a CUDA device; use bf16-mixed on CPU")
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed")
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list | tuple) else batch
    if isinstance(first, dict):
        first = next(iter(first.values()))
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1


def _sum_over_ranks(measurement: Any, device: torch.device) -> Any:
    total = torch.tensor([measurement.energy_j], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return _replace(measurement, energy_j=float(total.item()))


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def resolve_device(option: str, rank: int) -> torch.device:
    """``auto``: this rank's CUDA device if any, else CPU."""
    if option == "cpu" or (option == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SpecError("device: cuda was asked for but no CUDA device is visible; use auto")
    local_rank = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated CUDA memory, or this process's peak resident set on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def make_checkpoint_manager(
    trainer: Trainer, rank: int, world_size: int, url: str | None = None
) -> CheckpointManager:
    """The checkpoint manager for this rank from the trainer's options (at ``url`` if given)."""
    spec = trainer.options.checkpoint
    keep_best = (spec.keep_best.metric, spec.keep_best.mode) if spec.keep_best else None
    return CheckpointManager(
        url or trainer.checkpoint_url,
        mirror_url=None if url else spec.mirror_url,
        keep_last=spec.keep_last,
        keep_best=keep_best,
        asynchronous=spec.asynchronous,
        rank=rank,
        world_size=world_size,
        fs=None if url else trainer.checkpoint_fs,
    )


def start_sampler(meter: EnergyMeter | None) -> PowerSampler | None:
    """A 1 s sampler keeping wrap-prone counters honest while the loop runs."""
    return PowerSampler(meter, interval_s=1.0).start() if meter is not None else None
