"""Training: one loop for every stage, and what it needs to be reliable.

  loop.py            train_and_evaluate(config, workdir): one stage, top to bottom
  stages.py          run(config, workdir): a config's stages in order ("@stage" references)
  reports.py         summary.json, validation curves, the strategy comparison
  steps.py           the compiled train / eval steps (pure functions over a state dict)
  accumulate.py      gradient accumulation inside the step (lax.scan over microbatches)
  finetune.py        the config's fine-tuning options (LoRA, EMA, precision) for the loop
  checkpoint.py      Orbax checkpoints: save, exact resume, transfer, params-only export
  placement.py       every load straight into its shardings; pj.load_params (runs, HF dirs)
  early_stopping.py  the early-stopping rule and the best checkpoint kept apart
  nonfinite.py       the NaN / Inf policy's host side
  preemption.py      SIGTERM -> save and exit 0
  writers.py         metrics.jsonl, TensorBoard, the progress line

May import: config, data, models, tasks, optim, parallel, utils, errors; stages.py
and placement.py also ptft_jax.convert (import stages, HF loads). Never inference or bench.
"""

from ptft_jax.train.loop import train_and_evaluate
from ptft_jax.train.stages import run

__all__ = ["run", "train_and_evaluate"]
