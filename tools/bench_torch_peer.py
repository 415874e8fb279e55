r"""The PyTorch peer of `python -m ptft_jax.bench`: HF BERT train steps of the same shapes.

  .venv-torch/bin/python tools/bench_torch_peer.py [--workload peer_bert_mlm ...]

Needs torch and transformers in a separate venv (torch is not a ptft_jax
requirement): `bash launch/setup_torch_peer.sh` makes `.venv-torch/` in the repository.
Prints one JSON line per workload with the keys of ptft_jax.bench.benchmark's records:

  peer_bert_mlm  BertForMaskedLM, 6 layers, hidden 384, 12 heads, ffn 1536, vocab
                 30522 (MiniLM-L6), batch 32 x 128, 20 masked positions per row
                 (labels -100 elsewhere; HF scores every position, as it does),
                 torch.optim.AdamW + clip_grad_norm_(1.0), dropout 0.1
  peer_bert_cls  BertForSequenceClassification (pooler + 2 classes), same shape

`model_flops_per_step` uses ptft_jax/bench/flops.py's formula (MLM output at the 20
masked positions), so flops_per_s compares the same useful work;
`executed_flops_per_step` counts HF's MLM output at all 128 positions.
`peak_flops_per_s` is torch's own 2048 x 2048 float32 matmul, measured in the
same process. Each workload runs in its own process (`peak_memory_bytes` is its
RSS high-water mark).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPE = dict(layers=6, hidden=384, heads=12, ffn=1536, vocab=30522, batch=32, seq=128,
             predictions=20)
TINY = dict(layers=2, hidden=16, heads=4, ffn=32, vocab=101, batch=4, seq=16, predictions=3)
WORKLOADS = ("peer_bert_mlm", "peer_bert_cls")


def train_flops(s: dict, head: str, positions: int) -> int:
  """The same formula as ptft_jax.flops.transformer_train_flops."""
  h, f, v, b, seq, layers = s["hidden"], s["ffn"], s["vocab"], s["batch"], s["seq"], s["layers"]
  backbone = 2 * layers * (4 * h * h + 2 * h * f) * b * seq + 4 * layers * b * seq ** 2 * h
  top = 2 * (h * h + h * v) * b * positions if head == "mlm" else 2 * (h * h + h * 2) * b
  return 3 * (backbone + top)


def matmul_peak(torch, n: int = 2048, reps: int = 5) -> float:
  a = torch.ones(n, n)
  torch.mm(a, a)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    torch.mm(a, a)
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / statistics.median(times)


def run(workload: str, steps: int, warmup: int, tiny: bool) -> dict:
  import torch
  from torch_env import import_transformers
  transformers = import_transformers()

  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  s = TINY if tiny else SHAPE
  config = transformers.BertConfig(
      vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
      num_attention_heads=s["heads"], intermediate_size=s["ffn"],
      max_position_embeddings=max(512, s["seq"]), hidden_dropout_prob=0.1,
      attention_probs_dropout_prob=0.1)
  gen = torch.Generator().manual_seed(0)
  ids = torch.randint(5, s["vocab"], (s["batch"], s["seq"]), generator=gen)
  batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
           "token_type_ids": torch.zeros_like(ids)}
  if workload == "peer_bert_mlm":
    model = transformers.BertForMaskedLM(config)
    labels = torch.full_like(ids, -100)
    for row in range(s["batch"]):
      pos = torch.randperm(s["seq"] - 2, generator=gen)[:s["predictions"]] + 1
      labels[row, pos] = ids[row, pos]
      batch["input_ids"][row, pos] = 3  # a [MASK]-like id
    batch["labels"] = labels
    flops = train_flops(s, "mlm", s["predictions"])
    executed = train_flops(s, "mlm", s["seq"])
  else:
    model = transformers.BertForSequenceClassification(config)  # num_labels=2
    batch["labels"] = ids[:, 1] % 2
    flops = executed = train_flops(s, "cls", 0)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss)

  t0 = time.perf_counter()
  step()
  first_s = time.perf_counter() - t0
  peak_before = matmul_peak(torch, 256 if tiny else 2048)
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    step()
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  peak = (peak_before + matmul_peak(torch, 256 if tiny else 2048)) / 2
  step_s = statistics.median(times)
  return {
      "workload": workload, "step_s": step_s, "examples_per_s": s["batch"] / step_s,
      "tokens_per_s": s["batch"] * s["seq"] / step_s, "model_flops_per_step": flops,
      "flops_per_s": flops / step_s, "peak_share": flops / step_s / peak,
      "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "memory_source": "rss_high_water", "peak_flops_per_s": peak,
      "executed_flops_per_step": executed, "step_s_min": min(times),
      "step_s_max": max(times), "steps": len(times), "first_step_s": first_s,
      "torch": torch.__version__, "transformers": transformers.__version__,
      "threads": torch.get_num_threads(),
      "attn_implementation": getattr(model.config, "_attn_implementation", None),
      "batch_size": s["batch"], "seq_len": s["seq"]}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(run(args.workload[0], args.steps, args.warmup, args.tiny)), flush=True)
    return 0
  for workload in args.workload:
    cmd = [sys.executable, __file__, "--child", "--workload", workload, "--steps",
           str(args.steps), "--warmup", str(args.warmup)] + (["--tiny"] if args.tiny else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
      sys.stderr.write(proc.stderr)
      return proc.returncode or 1
    print(lines[-1], flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
