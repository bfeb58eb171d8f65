"""A run's progress on the console: a tqdm bar on a terminal, one plain line per evaluation
otherwise (papermill, CI, log files)."""
from __future__ import annotations

import math
import sys

from .config import TrainConfig


class Progress:
    def __init__(self, config: TrainConfig, name: str, start: int, rank: int):
        mode = config.progress if config.progress != "auto" else ("bar" if sys.stderr.isatty() else "log")
        self.mode, self.name, self.total, self.bar = (mode if rank == 0 else "none"), name, config.iterations, None
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=config.iterations, initial=start, desc=name, unit="it")

    def update(self, iteration: int, loss: float) -> None:
        if self.bar:
            self.bar.update(iteration - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def log(self, row: dict) -> None:
        if self.mode == "log":
            val = f"val {100 * row['val_error']:.1f}% " if not math.isnan(row["val_error"]) else ""
            print(f"[{self.name}] it {row['iteration']}/{self.total} lr {row['lr']:.4g} "
                  f"train {row['train_loss']:.3f}/{100 * row['train_error']:.1f}% {val}"
                  f"test {100 * row['test_error']:.1f}% ({row['wall_time']:.0f}s)", flush=True)

    def message(self, text: str) -> None:
        if self.mode != "none":
            print(text, file=sys.stderr if self.bar else sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
