"""The SFT demo of docs/llm.md: exact match on held-out prompts before and after SFT.

  python -m ptft_jax.main --config=configs/llm_sft.py:tiny --workdir=runs/sft_tiny
  python tools/sft_demo.py --workdir runs/sft_tiny

"Before" is the run's model at initialization (the same shape, seed 0 random weights: the
tiny variant trains from scratch); "after" is the run's latest checkpoint. Both answer the
shipped held-out prompts (pkg://sft_tiny/test.jsonl, never seen in training) greedily
through the run's chat template; an answer counts when it equals the reference after
stripping whitespace. Prints one JSON object: overall and per-task exact match.
"""

import argparse
import collections
import json

import jax
import jax.numpy as jnp

from ptft_jax.data.text.sources import resolve_path
from ptft_jax.inference.generator import Generator, load_generator
from ptft_jax.models import build_backbone


def exact_match(generator: Generator, rows: list[dict], max_new_tokens: int) -> dict:
  out = generator.generate([r["prompt"] for r in rows], max_new_tokens=max_new_tokens)
  hits = collections.Counter()
  totals = collections.Counter()
  for row, gen in zip(rows, out, strict=True):
    task = row["prompt"].split()[0].lower().rstrip(":")
    totals[task] += 1
    hits[task] += gen.text.strip() == row["response"].strip()
  return {"exact_match": round(sum(hits.values()) / len(rows), 3),
          "per_task": {t: f"{hits[t]}/{totals[t]}" for t in sorted(totals)}}


def main():
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's read-only notices
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="an SFT run (configs/llm_sft.py)")
  parser.add_argument("--input", default="pkg://sft_tiny/test.jsonl")
  parser.add_argument("--max-new-tokens", type=int, default=24)
  args = parser.parse_args()
  with open(resolve_path(args.input)) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  after = load_generator(args.workdir)
  backbone = build_backbone(after.model_config)
  init = backbone.init(jax.random.key(0), {"input_ids": jnp.zeros((1, 8), jnp.int32)},
                       train=False)["params"]
  head = after.params["head"]
  before_params = {"backbone": init}
  if head is not None:
    before_params["heads"] = {"lm": jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(1), x.shape) * 0.02, head)}
  before = Generator(after.model_config, before_params, tokenizer=after.tokenizer,
                     chat_prompts=after.chat_prompts)
  print(json.dumps({"prompts": len(rows), "before": exact_match(before, rows, args.max_new_tokens),
                    "after": exact_match(after, rows, args.max_new_tokens)}, indent=1))


if __name__ == "__main__":
  main()
