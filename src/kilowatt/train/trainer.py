"""The training loop kilowatt owns: placement, precision, accumulation, clipping, schedules,
evaluation, early stop, checkpoints, exact resume, preemption and metering.

    >>> from kilowatt import Trainer
    >>> trainer = Trainer(make_model, make_optimizer, train_data=dataset,  # doctest: +SKIP
    ...                   loss_fn=torch.nn.functional.mse_loss, steps=200, batch_size=16)
    >>> result = trainer.fit()  # doctest: +SKIP
    >>> result.samples_per_s, result.account.carbon_gco2e  # doctest: +SKIP

The loop reads top to bottom in ``Loop.run`` (``kilowatt.train.loop``): restore, then per
step: micro-batches with ``no_sync`` until the last, unscale and clip, step, schedule, then
log, evaluate, checkpoint and check for preemption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from pydantic import ValidationError
from torch import nn

from kilowatt.errors import SpecError
from kilowatt.meter import Accountant, EnergyMeter
from kilowatt.spec import Settings, TrainOptions, format_validation_error
from kilowatt.train.batches import LoaderFactory
from kilowatt.train.callbacks import Callback, FitResult

__all__ = ["EXIT_PREEMPTED", "Trainer"]

#: Exit code of ``kilowatt train`` after a SIGTERM/SIGINT checkpoint (EX_TEMPFAIL: "try
#: again"), so a scheduler can tell a preempted job, to requeue with ``--resume auto``,
#: from a failed one.
EXIT_PREEMPTED = 75

ModelArg = nn.Module | Callable[[], nn.Module]
OptimizerArg = torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer]


class Trainer:
    """Runs user PyTorch code with kilowatt's loop.

    Args:
        model: a module, or a zero-argument factory (called after seeding, on every rank).
        optimizer: an optimizer over ``model``'s parameters, or ``(model) -> optimizer``;
            default AdamW(lr=1e-3).
        train_data: a map-style dataset (kilowatt builds sharded, resumable loaders), or a
            ``(batch_size, rank, world_size) -> iterable`` factory.
        loss_fn: ``(outputs, targets) -> loss`` for batches ``(inputs, targets)``.
        training_step: ``(model, batch) -> loss`` instead of ``loss_fn``.
        scheduler: ``(optimizer) -> LRScheduler``, stepped once per optimizer step.
        eval_data: a dataset or factory evaluated every ``eval_every`` steps (``eval_loss``).
        options: the loop options; keyword ``overrides`` replace single fields.
        callbacks: receive events on rank 0 (progress bar added when ``progress``).
        name: names the default checkpoint folder ``<KILOWATT_HOME>/checkpoints/<name>``.
        meter: ``() -> EnergyMeter`` built on each rank (None: no metering).
        accountant: prices the measured energy and time (None: no cost or carbon).
        checkpoint_fs: an fsspec filesystem for the checkpoint URL (e.g. an injected slow one).

    With ``workers > 1`` everything passed must pickle (module-level functions, not lambdas),
    because each worker process receives a copy. Inside an existing process group (torchrun,
    Ray Train) ``fit()`` joins it instead of starting workers.
    """

    def __init__(
        self,
        model: ModelArg,
        optimizer: OptimizerArg | None = None,
        *,
        train_data: Any,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        training_step: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        eval_data: Any = None,
        options: TrainOptions | None = None,
        callbacks: Sequence[Callback] = (),
        name: str = "run",
        meter: Callable[[], EnergyMeter] | None = EnergyMeter.for_this_process,
        accountant: Accountant | None = None,
        checkpoint_fs: Any = None,
        **overrides: Any,
    ) -> None:
        if (loss_fn is None) == (training_step is None):
            raise SpecError("give exactly one of loss_fn= or training_step= to Trainer")
        if train_data is None:
            raise SpecError("Trainer needs train_data= (a dataset or a loader factory)")
        base = options or TrainOptions()
        try:
            self.options = TrainOptions.model_validate({**base.model_dump(), **overrides})
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, "Trainer options")) from None
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_data: Any | LoaderFactory = train_data
        self.eval_data = eval_data
        self.loss_fn, self.training_step = loss_fn, training_step
        self.callbacks = list(callbacks)
        self.name = name
        self.meter_factory, self.accountant = meter, accountant
        self.checkpoint_fs = checkpoint_fs
        self.checkpoint_url = self.options.checkpoint.url or str(
            Settings.from_env().home / "checkpoints" / name
        )

    def fit(self) -> FitResult:
        """Train to ``steps`` (resuming per ``resume``) and return what it did and cost.

        Returns ``FitResult.preempted`` True after a SIGTERM/SIGINT checkpoint; the CLI
        turns that into exit code ``EXIT_PREEMPTED``.
        """
        if self.options.workers > 1 and not dist.is_initialized():
            from kilowatt.train.distributed import spawn_workers

            return spawn_workers(self)
        return self.fit_rank()

    def fit_rank(self) -> FitResult:
        """Run this process's share: one rank of an initialised process group, or alone.

        This is the per-rank entry point for launchers that set up ``torch.distributed``
        themselves (Ray Train workers, torchrun).
        """
        from kilowatt.train.loop import Loop

        return Loop(self).run()

    # --- helpers the loop uses; kept here so a subclass can change one piece.

    def build_model(self) -> nn.Module:
        """The user's model (calling the factory if one was given)."""
        model = self.model
        if isinstance(model, nn.Module):
            return model
        built = model()
        if not isinstance(built, nn.Module):
            raise SpecError(f"the model factory returned {type(built).__name__}, not nn.Module")
        return built

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The user's optimizer over ``model`` (AdamW(lr=1e-3) if none was given)."""
        if self.optimizer is None:
            return torch.optim.AdamW(model.parameters(), lr=1e-3)
        if isinstance(self.optimizer, torch.optim.Optimizer):
            return self.optimizer
        built = self.optimizer(model)
        if not isinstance(built, torch.optim.Optimizer):
            raise SpecError(
                f"the optimizer factory returned {type(built).__name__}, not torch.optim.Optimizer"
            )
        return built

    def compute_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The loss of one micro-batch (``training_step`` or ``loss_fn`` on ``(x, y)``)."""
        if self.training_step is not None:
            return self.training_step(model, batch)
        if not isinstance(batch, list | tuple) or len(batch) != 2:
            raise SpecError(
                f"loss_fn expects batches (inputs, targets), got {type(batch).__name__}; "
                "give training_step=(model, batch) -> loss for other batch shapes"
            )
        inputs, targets = batch
        assert self.loss_fn is not None  # one of the two is set, checked in __init__
        return self.loss_fn(model(inputs), targets)
