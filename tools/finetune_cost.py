r"""Step cost of fine-tuning strategies on a MiniLM-shaped BERT encoder; prints JSON.

  python tools/finetune_cost.py [--batch 32] [--seq 128] [--reps 5] [--layers 6]

One jitted train step per strategy (full, linear_probe, freeze_layers=3, lora
rank 8 on the attention and MLP kernels, gradual_unfreeze before its first
unfreeze), on random token ids. Strategies are timed round-robin, `--reps`
rounds after a warm-up, and each reports its median: the machine may be shared,
and round-robin spreads any load evenly over all of them. The ratios to the full
step are the numbers to read. A measurement, not a test.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ptft_jax import base_config, models, optim
from ptft_jax.models.heads import SequenceClassificationHead  # noqa: E402
from ptft_jax.optim import lora
from ptft_jax.tasks import text as tasks_text  # noqa: E402
from ptft_jax.train import steps


def build(strategy: str, args):
  c = base_config()
  c.optim.warmup_steps = 0
  if strategy == "freeze_layers":
    c.optim.strategy.name, c.optim.strategy.freeze_layers = "freeze_layers", args.layers // 2
  elif strategy == "gradual_unfreeze":
    c.optim.strategy.name, c.optim.strategy.unfreeze_every = "gradual_unfreeze", 10_000
  elif strategy != "full":
    c.optim.strategy.name = strategy
  model = models.build_model(c.model, {"classifier": SequenceClassificationHead(2)})
  model = model.clone(backbone=models.bert(
      vocab_size=30522, hidden_size=384, num_layers=args.layers, num_heads=12,
      intermediate_size=1536, max_position_embeddings=512, dtype=args.dtype))
  task = tasks_text.TextClassification(num_classes=2, vocab_size=30522)
  rng = np.random.default_rng(0)
  batch = {"input_ids": jnp.asarray(rng.integers(100, 30000, (args.batch, args.seq)), jnp.int32),
           "attention_mask": jnp.ones((args.batch, args.seq), jnp.int32),
           "label": jnp.asarray(rng.integers(0, 2, (args.batch,)), jnp.int32)}
  params, model_state = steps.init_variables(
      model, {k: v[:2] for k, v in batch.items() if k != "label"}, jax.random.PRNGKey(0))
  param_fn = None
  if strategy == "lora":
    params = lora.add_adapters(params, jax.random.PRNGKey(1), rank=8,
                               targets=r"backbone/layer_\d+/(attention|mlp)/.*/kernel")
    param_fn = lambda p: lora.merge_lora(p, 16.0)
  tx, groups = optim.make_optimizer(params, c.optim, total_steps=100)
  trainable = optim.trainable_mask(params, groups)
  step = jax.jit(steps.make_train_step(model, task, tx, trainable=trainable, param_fn=param_fn),
                 donate_argnums=(0,))
  state = {"step": jnp.int32(0), "params": params, "model_state": model_state,
           "opt_state": tx.init(params), "rng": jax.random.PRNGKey(2)}
  counts = optim.param_counts(groups)
  return step, state, batch, counts


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--strategies", default="full,linear_probe,freeze_layers,lora,"
                      "gradual_unfreeze")
  args = parser.parse_args()
  runs = {}
  for name in args.strategies.split(","):
    step, state, batch, counts = build(name, args)
    state, m = step(state, batch)  # compile + first step
    jax.block_until_ready(m)
    runs[name] = {"step": step, "state": state, "batch": batch, "counts": counts, "times": []}
  for _ in range(args.reps):
    for r in runs.values():
      t0 = time.perf_counter()
      r["state"], m = r["step"](r["state"], r["batch"])
      jax.block_until_ready(m)
      r["times"].append(time.perf_counter() - t0)
  full = statistics.median(runs["full"]["times"]) if "full" in runs else None
  out = {"device": jax.devices()[0].device_kind, "batch": args.batch, "seq": args.seq,
         "layers": args.layers, "dtype": args.dtype, "reps": args.reps, "strategies": {}}
  for name, r in runs.items():
    med = statistics.median(r["times"])
    out["strategies"][name] = {
        "median_step_s": round(med, 4), "ratio_to_full": round(med / full, 3) if full else None,
        "trainable_params": r["counts"]["trainable"], "total_params": r["counts"]["total"]}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
