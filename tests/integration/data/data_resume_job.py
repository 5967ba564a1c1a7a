"""A training job over a kilowatt data set that records every sample id it trains on.

Run as ``python data_resume_job.py DATA_DIR CKPT_DIR OUT STEPS [KILL_AT_STEP]``: the model
keeps a per-sample counter in a buffer (so it is checkpointed with the weights); with
KILL_AT_STEP the process SIGKILLs itself in the middle of that training step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from kilowatt.data import Loader, Storage
from kilowatt.train import Trainer

ROWS = 240


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.register_buffer("seen", torch.zeros(ROWS, dtype=torch.int64))
        self.calls = 0


def main() -> None:
    data_dir, checkpoint_dir, out, steps = sys.argv[1:5]
    kill_at = int(sys.argv[5]) if len(sys.argv) > 5 else None
    model = Counting()

    def training_step(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        module.calls += 1
        if kill_at is not None and module.calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no handler, no final checkpoint
        module.seen.index_add_(0, batch["id"], torch.ones_like(batch["id"]))
        return module.linear(batch["x"]).pow(2).mean()

    loader = Loader("toy:v1", Storage(data_dir), num_workers=2, shuffle_window=2)
    trainer = Trainer(
        model,
        training_step=training_step,
        train_data=loader,
        steps=int(steps),
        batch_size=8,
        checkpoint={"url": checkpoint_dir, "every": "1", "asynchronous": False},
        resume="auto",
        progress=False,
        meter=None,
    )
    result = trainer.fit()
    Path(out).write_text(json.dumps({"seen": model.seen.tolist(), "start": result.start_step}))


if __name__ == "__main__":
    main()
