"""Published training runs: model shape, data, batch, hardware and reported
accelerator-hours, each with its source. ``kilowatt plan --validate`` predicts every run
and the planner's achieved-efficiency defaults are fitted on them."""

from __future__ import annotations

import datetime as dt
from importlib import resources
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from kilowatt.errors import CatalogError
from kilowatt.spec import Spec
from kilowatt.spec.plan import PlanModel

__all__ = ["PublishedLayout", "PublishedRun", "load_published_runs"]


class PublishedLayout(Spec):
    """Parallel degrees a run's report gives (expert parallelism ``ep`` splits the experts
    over data-parallel ranks), and its activation recomputation where its configuration
    states one."""

    tp: int = Field(gt=0)
    pp: int = Field(gt=0)
    dp: int = Field(gt=0)
    zero: Literal[0, 1, 2, 3] = 1
    ep: int = Field(default=1, gt=0)
    recompute: Literal["none", "selective", "full"] | None = None
    micro_batch: int = Field(default=1, gt=0)


class PublishedRun(Spec):
    """One published training run.

    Attributes:
        name: short key (``llama-2-70b``).
        source: where the figures are published (URL and table).
        model: the model's shape, as a plan spec gives it.
        tokens: training tokens.
        global_batch_tokens: tokens per optimizer step after any warm-up ramp.
        precision: training precision (``fp8`` for fp8 matmuls).
        accelerator: catalog accelerator name.
        count: accelerators used.
        count_published: whether the source states ``count`` (else it is an estimate).
        per_node: accelerators per node.
        node_network_gbps: per-node fabric bandwidth, 1e9 bits/s.
        layout: parallel layout from the report, if it gives one.
        accelerator_hours: reported accelerator-hours.
        hours_basis: how the hours were reported or derived.
        as_of: date the figures were read.
    """

    name: str = Field(min_length=1)
    source: str = Field(min_length=1)
    as_of: dt.date
    model: PlanModel
    tokens: float = Field(gt=0)
    global_batch_tokens: int | None = Field(default=None, gt=0)
    precision: Literal["bf16", "fp16", "fp8"]
    accelerator: str
    count: int = Field(gt=0)
    count_published: bool
    per_node: int = Field(gt=0)
    node_network_gbps: float = Field(gt=0)
    layout: PublishedLayout | None = None
    accelerator_hours: float = Field(gt=0)
    hours_basis: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> PublishedRun:
        if self.global_batch_tokens is None:
            raise ValueError(
                "global_batch_tokens is missing: a run's step count, pipeline fill and "
                "communication all follow from its batch; give the published batch in tokens"
            )
        if self.count % self.per_node:
            raise ValueError(f"count {self.count} is not a multiple of per_node {self.per_node}")
        if self.layout is not None:
            used = self.layout.tp * self.layout.pp * self.layout.dp
            if used != self.count:
                raise ValueError(
                    f"layout uses tp*pp*dp = {used} accelerators, count is {self.count}"
                )
        return self

    @property
    def nodes(self) -> int:
        return self.count // self.per_node


def load_published_runs(text: str | None = None) -> list[PublishedRun]:
    """The built-in ``published_runs.yaml`` (or ``text`` in its format).

    Raises:
        CatalogError: a run is invalid (names the run and the field).
    """
    if text is None:
        text = (resources.files("kilowatt.catalog") / "data" / "published_runs.yaml").read_text()
    data = yaml.safe_load(text) or {}
    runs = []
    for index, raw in enumerate(data.get("runs") or []):
        name = raw.get("name", f"#{index}") if isinstance(raw, dict) else f"#{index}"
        try:
            runs.append(PublishedRun.model_validate(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, p['loc'])) or '(run)'}: {p['msg']}" for p in exc.errors()
            )
            raise CatalogError(f"published run {name!r}: {problems}") from None
    return runs
