r"""Where a train step's time goes: XLA ops of one compiled step, grouped, from a profiler trace.

  python tools/profile_step.py bert_cls            # the bench's classification step
  python tools/profile_step.py bert_mlm --steps 5 --top 25
  python tools/profile_step.py contrastive         # the quickstart's pretraining step

Builds the step exactly as `python -m ptft_jax.bench` does (ptft_jax/bench/benchmark.py;
`contrastive` from configs/quickstart.py's pretrain stage), runs it under
`jax.profiler.trace`, and sums the duration of every XLA op event by op name, then by
kind (the op's HLO: dot / convolution / fusion of what / copy / ...) from the compiled
module's text. Prints one JSON object: the step's wall time (median), the share of it
that ops account for (the rest: dispatch and idle threads), and the ops and kinds by
time. Time on a quiet machine; on a loaded one the shares still say where to look.

Plain `dot` ops (XLA:CPU's Eigen path; in the BERT steps the weight gradients) run
asynchronously: their events time the launch (a 4.8 GFLOP product shows 2-3 ms), and
their work lands in the time of the ops that run beside them, often the YNNPACK dot of
the same layer's input gradient (`fusion:dot`), which then looks twice as slow as alone.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ptft_jax import huge_pages  # noqa: E402

huge_pages.reexec_with_huge_pages()  # profile what `python -m ptft_jax...` commands run


def build(workload: str):
  """(jitted step, state, batch) of a bench workload or the quickstart's contrastive step."""
  import jax
  import jax.numpy as jnp

  from ptft_jax.bench import benchmark

  if workload in ("bert_cls", "bert_mlm", "gpt_lm"):
    kind = {"bert_cls": "cls", "bert_mlm": "mlm", "gpt_lm": "lm"}[workload]
    return benchmark.build_text_step(kind, benchmark.text_shape(False))
  if workload != "contrastive":
    raise SystemExit(f"unknown workload {workload!r}")
  from configs import quickstart
  from ptft_jax import data, optim, tasks
  from ptft_jax.models import build_model
  from ptft_jax.train import loop, steps

  config = quickstart.get_config("").stages.pretrain
  bundle = data.make_data(config.data, seed=0)
  task, heads = tasks.build_task(config, bundle.info)
  model = build_model(optim.precision.model_config(config), heads)
  example = loop._example_inputs(task, bundle)
  params, model_state = jax.jit(lambda r: steps.init_variables(model, example, r))(
      jax.random.PRNGKey(0))
  tx, groups = optim.make_optimizer(params, config.optim, 1000)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
           "opt_state": jax.jit(tx.init)(params), "rng": jax.random.PRNGKey(1)}
  step = jax.jit(steps.make_train_step(model, task, tx,
                                       trainable=optim.trainable_mask(params, groups)),
                 donate_argnums=(0,))
  return step, state, jax.device_put(next(bundle.train_iterator))


def op_kinds(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> a short kind ("dot", "fusion:reduce,exp", "copy", ...)."""
  kinds, fused, shapes = {}, {}, {}
  computation = None
  for line in hlo_text.splitlines():
    header = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if header and "=" not in line.split("{")[0]:
      computation = header.group(1)
      fused.setdefault(computation, set())
      continue
    m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(", line)
    if not m:
      continue
    name, shape, op = m.groups()
    shapes[name] = shape
    if computation is not None:
      fused[computation].add(op)
    called = re.search(r"calls=%?([\w.\-]+)", line)
    kinds[name] = (op, called.group(1) if called else None)
  out = {}
  for name, (op, called) in kinds.items():
    if op == "fusion" and called in fused:
      inner = sorted(fused[called] - {"parameter", "constant", "bitcast", "broadcast",
                                      "get-tuple-element", "tuple", "reshape"})
      out[name] = "fusion:" + ",".join(inner[:4])
    else:
      out[name] = op
  return out, shapes


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workload", choices=["bert_cls", "bert_mlm", "gpt_lm", "contrastive"])
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=20)
  parser.add_argument("--skip", default="", help="leave out ops whose kind matches this regex")
  args = parser.parse_args()
  import jax

  step, state, batch = build(args.workload)
  kinds, shapes = op_kinds(step.lower(state, batch).compile().as_text())
  for _ in range(2):  # compile and warm up
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  walls = []
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        walls.append(time.perf_counter() - t0)
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  by_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in kinds:
      by_op[e["name"]] += e.get("dur", 0) / 1e6 / args.steps  # seconds per step
  by_kind = collections.Counter()
  for name, seconds in by_op.items():
    by_kind[kinds[name]] += seconds
  wall = statistics.median(walls)
  total = sum(by_op.values())
  print(json.dumps({
      "workload": args.workload, "step_s": wall, "op_seconds_per_step": total,
      # Ops of the two threads overlap, so the sum can exceed the wall time.
      "ops_over_wall": total / wall,
      "kinds": [f"{s * 1e3:9.3f} ms {s / total:6.1%}  {k}"
                for k, s in by_kind.most_common(args.top)],
      "ops": [f"{s * 1e3:9.3f} ms  {k}  {kinds[k]}  {shapes[k]}"
              for k, s in by_op.most_common()
              if not (args.skip and re.search(args.skip, kinds[k]))][:args.top],
  }, indent=1))


if __name__ == "__main__":
  main()
