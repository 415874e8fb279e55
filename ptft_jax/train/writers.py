"""Metric writers: metrics.jsonl (one JSON object per logged step) and TensorBoard events.

Only process 0 writes; the others get a writer that drops everything.

A resumed run repeats the steps between its checkpoint and the kill, and logs
them again. So a writer told the step the loop starts from (`start_step`)
first drops the rows a restarted run will write again: those with a step
beyond it, and the `final_*` rows (the final evaluation always runs again).
metrics.jsonl then holds each (split, step) once. TensorBoard event files are
append-only and cannot be truncated; the writer opens them with
`purge_step=start_step + 1`, which makes TensorBoard hide the older events of
the repeated steps (other event readers see them twice).

In a gs:// workdir metrics.jsonl is an object, which cannot be appended to: the
writer keeps its text and uploads it whole, at most every `REMOTE_UPLOAD_SECONDS`
(GCS allows about one write per second to one object) and at `flush()`, which the
loop calls before each checkpoint save, so the rows up to a saved step are kept.
"""

import io
import json
import os
import time

import jax
import numpy as np

from ptft_jax.utils import is_file, is_remote, make_dirs, read_text, write_text_atomic


def _scalar(v):
  v = np.asarray(jax.device_get(v))
  return float(v) if v.ndim == 0 else v.tolist()


METRICS_FILE = "metrics.jsonl"
REMOTE_UPLOAD_SECONDS = 10.0


def _kept(line: str, start_step: int) -> bool:
  """Whether a metrics.jsonl line survives a restart from `start_step`."""
  try:
    record = json.loads(line)
  except ValueError:
    return False  # a row torn by a kill mid-write
  if not isinstance(record, dict):
    return True
  split = str(record.get("split", ""))
  step = record.get("step")
  if split.startswith("final_"):  # the restarted run evaluates again at its end
    return False
  return not isinstance(step, int) or step <= start_step


def truncate_metrics(path: str, start_step: int) -> int:
  """Drops the rows of `path` that a run restarting after `start_step` writes again.

  Those are rows with `step > start_step`, every `final_*` row and a torn last
  row; the others are kept byte for byte. The file is replaced atomically
  (`write_text_atomic`), so a kill leaves the old or the new one. Returns how
  many rows were dropped (0 when the file is missing).
  """
  if not is_file(path):
    return 0
  lines = io.StringIO(read_text(path), newline=None).readlines()  # as f.readlines()
  if lines and not lines[-1].endswith("\n"):
    lines[-1] += "\n"  # a torn row still counts as one line to judge
  kept = [ln for ln in lines if not ln.strip() or _kept(ln, start_step)]
  if len(kept) == len(lines):
    return 0
  write_text_atomic(path, "".join(kept))
  return len(lines) - len(kept)


class MetricWriter:
  """Appends `{"step": s, "split": ..., metrics...}` lines and TensorBoard scalars.

  With `start_step` (the step the loop starts from: 0, or the restored step),
  rows a restarted run writes again are dropped first (`truncate_metrics`).
  Without it the file is only appended to.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, start_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    make_dirs(workdir)
    path = os.path.join(workdir, METRICS_FILE)
    if start_step is not None:
      truncate_metrics(path, int(start_step))
    self._jsonl = _RemoteText(path) if is_remote(path) else open(path, "a")  # noqa: SIM115
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported late: it is slow to import

      # purge_step: TensorBoard hides the events of steps >= it from earlier sessions.
      purge = None if start_step is None else int(start_step) + 1
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)

  def write(self, step: int, metrics: dict, *, split: str = "train") -> dict:
    scalars = {k: _scalar(v) for k, v in metrics.items()}
    if self.enabled:
      record = {"step": int(step), "split": split, "time": time.time(), **scalars}
      self._jsonl.write(json.dumps(record) + "\n")
      if not isinstance(self._jsonl, _RemoteText):  # it uploads when due, not per row
        self._jsonl.flush()
      if self._tb is not None:
        for k, v in scalars.items():
          if isinstance(v, float):
            self._tb.add_scalar(f"{split}/{k}", v, int(step))
    return scalars

  def flush(self):
    """Makes every row written so far durable (a local file is already flushed per row)."""
    if self.enabled:
      self._jsonl.flush()
      if self._tb is not None:
        self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


class _RemoteText:
  """metrics.jsonl in object storage: the file's text, uploaded whole (see the module doc).

  `write` adds text and uploads it when the last upload is `REMOTE_UPLOAD_SECONDS` old;
  `flush` and `close` upload whatever is pending.
  """

  def __init__(self, path: str):
    self.path = path
    self._text = read_text(path) if is_file(path) else ""  # an object is never torn
    self._pending = False
    self._uploaded = time.monotonic()

  def write(self, text: str):
    self._text += text
    self._pending = True
    if time.monotonic() - self._uploaded >= REMOTE_UPLOAD_SECONDS:
      self.flush()

  def flush(self):
    if self._pending:
      write_text_atomic(self.path, self._text)
      self._pending = False
      self._uploaded = time.monotonic()

  def close(self):
    self.flush()


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
