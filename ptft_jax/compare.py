r"""Strategy comparison: test accuracy against trainable parameters, per stage.

Reads each stage's `eval_test.json` and `param_groups.json` (written by every
run) and writes `<workdir>/strategies.json`, `<workdir>/strategies.md` (a
table) and `<workdir>/strategies.png` (accuracy against trainable parameters,
log scale). `configs/strategies.py` asks `run` for it (`config.report`); by hand:

  python -m ptft_jax.compare runs/strategies [stage ...]
"""

import json
import os
import sys

from ptft_jax.errors import UserError


def collect(workdir: str, stages: list[str]) -> list[dict]:
  """[{stage, trainable, total, test_accuracy, test_macro_f1}] for stages that have results."""
  rows = []
  for name in stages:
    stage_dir = os.path.join(workdir, name)
    try:
      with open(os.path.join(stage_dir, "eval_test.json")) as f:
        result = json.load(f)
      with open(os.path.join(stage_dir, "param_groups.json")) as f:
        params = json.load(f)
    except FileNotFoundError:
      continue
    if "accuracy" not in result:
      continue
    rows.append({"stage": name, "trainable": params["trainable"], "total": params["total"],
                 "test_accuracy": result["accuracy"], "test_macro_f1": result.get("macro_f1"),
                 "step": result.get("step")})
  return rows


def format_table(rows: list[dict]) -> str:
  lines = ["| stage | trainable params | share | test accuracy | test macro-F1 |",
           "|---|---:|---:|---:|---:|"]
  for r in rows:
    f1 = f"{r['test_macro_f1']:.4f}" if r["test_macro_f1"] is not None else "-"
    share = 100 * r["trainable"] / r["total"]
    lines.append(f"| {r['stage']} | {r['trainable']:,} | {share:.3g}% | "
                 f"{r['test_accuracy']:.4f} | {f1} |")
  return "\n".join(lines)


def plot(rows: list[dict], out_path: str):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter

  fig, ax = plt.subplots(figsize=(6, 4))
  markers = "osD^vP*X"
  for i, r in enumerate(rows):  # a legend, not labels: strategies often share an x
    ax.scatter(max(r["trainable"], 1), r["test_accuracy"], s=50, marker=markers[i % 8],
               label=f"{r['stage']} ({r['test_accuracy']:.3f})", alpha=0.8)
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(NullFormatter())
  ax.legend(fontsize=8, loc="best")
  ax.set_xlabel("trainable parameters")
  ax.set_ylabel("test accuracy")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)


def write_report(workdir: str, stages: list[str]) -> str:
  """Writes strategies.{json,md,png} into `workdir`; returns the table."""
  rows = collect(workdir, stages)
  if not rows:
    raise UserError(f"no stage in {workdir} has eval_test.json and param_groups.json")
  table = format_table(rows)
  with open(os.path.join(workdir, "strategies.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(workdir, "strategies.md"), "w") as f:
    f.write(table + "\n")
  plot(rows, os.path.join(workdir, "strategies.png"))
  return table


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
    return 2
  workdir = argv[1]
  stages = argv[2:] or sorted(
      d for d in os.listdir(workdir) if os.path.isfile(os.path.join(workdir, d, "eval_test.json")))
  try:
    print(write_report(workdir, stages))
  except (UserError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
