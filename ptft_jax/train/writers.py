"""Metric writers: metrics.jsonl (one JSON object per logged step) and TensorBoard events.

Only process 0 writes; the others get a writer that drops everything.
"""

import json
import os
import time

import jax
import numpy as np


def _scalar(v):
  v = np.asarray(jax.device_get(v))
  return float(v) if v.ndim == 0 else v.tolist()


class MetricWriter:
  """Appends `{"step": s, "split": ..., metrics...}` lines and TensorBoard scalars."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported late: it is slow to import

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict, *, split: str = "train") -> dict:
    scalars = {k: _scalar(v) for k, v in metrics.items()}
    if self.enabled:
      record = {"step": int(step), "split": split, "time": time.time(), **scalars}
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
      if self._tb is not None:
        for k, v in scalars.items():
          if isinstance(v, float):
            self._tb.add_scalar(f"{split}/{k}", v, int(step))
    return scalars

  def close(self):
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


class Progress:
  """Steps/s and ETA that ignore the first (compiling) step and pauses for eval / saves."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self.first_step = None
    self.first_time = None
    self.paused = 0.0

  def tick(self, step: int):
    if self.first_step is None:  # the first finished step includes compilation
      self.first_step, self.first_time = step, time.perf_counter()

  def pause(self, seconds: float):
    self.paused += seconds

  def line(self, step: int) -> str:
    if self.first_step is None or step <= self.first_step:
      return f"step {step}/{self.total}"
    elapsed = time.perf_counter() - self.first_time - self.paused
    rate = (step - self.first_step) / max(elapsed, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    return f"step {step}/{self.total}  {rate:.1f} steps/s  ETA {eta:.0f}s"
