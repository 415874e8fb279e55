r"""What a staged run reports: the summary table, validation curves, the strategy comparison.

* `write_summary_json` / `format_summary`: each classification stage's test
  accuracy and macro-F1 (`<workdir>/summary.json`).
* `write_validation_curves_png`: validation accuracy against step, one line per stage.
* `write_strategy_report`: reads each stage's `eval_test.json` and
  `param_groups.json` (written by every run) and writes `<workdir>/strategies.json`,
  `strategies.md` (a table) and `strategies.png` (accuracy against trainable
  parameters, log scale). `configs/strategies.py` asks for it (`config.report`); by hand:

  python -m ptft_jax.compare runs/strategies [stage ...]
"""

import contextlib
import io
import json
import os
import sys

from ptft_jax.errors import UserError
from ptft_jax.utils import (
  is_file,
  list_dir,
  read_json,
  read_text,
  write_bytes_atomic,
  write_json_atomic,
  write_text_atomic,
)


def collect(workdir: str, stages: list[str]) -> list[dict]:
  """[{stage, trainable, total, test_accuracy, test_macro_f1}] for stages that have results."""
  rows = []
  for name in stages:
    stage_dir = os.path.join(workdir, name)
    try:
      result = read_json(os.path.join(stage_dir, "eval_test.json"))
      params = read_json(os.path.join(stage_dir, "param_groups.json"))
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


@contextlib.contextmanager
def _png_axes(out_path: str):
  """A 6 x 4 in matplotlib axes (headless Agg backend), written to `out_path` as a PNG on exit."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  try:
    yield ax
    fig.tight_layout()
    png = io.BytesIO()  # then written whole: out_path may be a gs:// URL
    fig.savefig(png, format="png", dpi=100)
    write_bytes_atomic(out_path, png.getvalue())
  finally:
    plt.close(fig)


def write_strategy_png(rows: list[dict], out_path: str):
  """Test accuracy against trainable parameters (log scale), one marker per stage."""
  from matplotlib.ticker import NullFormatter

  with _png_axes(out_path) as ax:
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


def write_strategy_report(workdir: str, stages: list[str]) -> str:
  """Writes strategies.{json,md,png} into `workdir`; returns the table."""
  rows = collect(workdir, stages)
  if not rows:
    raise UserError(f"no stage in {workdir} has eval_test.json and param_groups.json")
  table = format_table(rows)
  write_json_atomic(os.path.join(workdir, "strategies.json"), rows)
  write_text_atomic(os.path.join(workdir, "strategies.md"), table + "\n")
  write_strategy_png(rows, os.path.join(workdir, "strategies.png"))
  return table


def main(argv: list[str]) -> int:
  """`python -m ptft_jax.compare RUN [stage ...]`; returns the exit status."""
  if len(argv) < 2:
    print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
    return 2
  workdir = argv[1]
  stages = argv[2:] or sorted(
      d for d in list_dir(workdir) if is_file(os.path.join(workdir, d, "eval_test.json")))
  try:
    print(write_strategy_report(workdir, stages))
  except (UserError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def summarize_stages(results: dict[str, dict]) -> dict:
  """{stage: {test_accuracy, test_macro_f1}} for the stages that report test accuracy."""
  return {name: {"test_accuracy": r["test"]["accuracy"], "test_macro_f1": r["test"]["macro_f1"]}
          for name, r in results.items() if "test" in r and "accuracy" in r["test"]}


def format_summary(summary: dict) -> str:
  lines = [f"{'stage':<12} {'test accuracy':>14} {'test macro-F1':>14}"]
  for name, r in summary.items():
    lines.append(f"{name:<12} {r['test_accuracy']:>14.4f} {r['test_macro_f1']:>14.4f}")
  return "\n".join(lines)


def read_metrics(workdir: str, split: str = "validation") -> list[dict]:
  """The records of `<workdir>/metrics.jsonl` for `split`, one per step, in order.

  A resumed run drops the rows it logs again (`writers.truncate_metrics`); for
  files written before that (or by hand) a later row of a step supersedes the
  earlier ones, and a row torn by a kill mid-write is skipped.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  by_step: dict = {}
  for line in io.StringIO(read_text(path), newline=None):  # lines as a text file has them
    try:
      record = json.loads(line)
    except ValueError:  # torn by a kill mid-write
      continue
    if record.get("split") == split:
      by_step.pop(record.get("step"), None)  # re-inserted last: the resumed run's place
      by_step[record.get("step")] = record
  return list(by_step.values())


def write_validation_curves_png(workdir: str, stages: list[str], out_path: str, key="accuracy"):
  """Validation `key` against step for each stage, one line each, to a PNG."""
  with _png_axes(out_path) as ax:
    for name in stages:
      records = [r for r in read_metrics(os.path.join(workdir, name)) if key in r]
      ax.plot([r["step"] for r in records], [r[key] for r in records], marker="o", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation {key}")
    ax.legend()
    ax.grid(alpha=0.3)


def label_efficiency(results: dict[str, dict], spec: dict) -> dict:
  """Accuracy against labels per class for each variant (pretrained, scratch, ...), over seeds.

  Args:
    results: {stage name: {split: metrics}} of a run (`stages.run`).
    spec: `config.label_efficiency`: {"labels_per_class": [k, ...], "seeds": [s, ...],
      "variants": [name, ...] (default pretrained, scratch), "legend": {name: what it
      is} (optional, for the picture), "stage": "{variant}_k{k}_s{seed}"}, the stage
      name of each point.

  Returns:
    {"labels_per_class": [...], "seeds": [...], "variants": [...], "<variant>":
    {"<split>_accuracy": {"mean": [...], "std": [...], "per_seed": [[...], ...]}}}
    for splits validation and test; std is the population std over seeds.
  """
  import numpy as np

  variants = list(spec.get("variants", ("pretrained", "scratch")))
  out = {"labels_per_class": list(spec["labels_per_class"]), "seeds": list(spec["seeds"]),
         "variants": variants, "legend": dict(spec.get("legend", {}))}
  for variant in variants:
    out[variant] = {}
    for split in ("validation", "test"):
      table = [[results[spec["stage"].format(variant=variant, k=k, seed=s)][split]["accuracy"]
                for s in spec["seeds"]] for k in spec["labels_per_class"]]
      out[variant][f"{split}_accuracy"] = {
          "mean": [float(np.mean(row)) for row in table],
          "std": [float(np.std(row)) for row in table], "per_seed": table}
  return out


def format_label_efficiency(curve: dict) -> str:
  """A printable table: labels per class, each variant's test accuracy, the first's gain."""
  variants = curve["variants"]
  lines = [f"{'labels/class':>12} " + " ".join(f"{v:>15}" for v in variants)
           + f" {'gain':>7}  (test accuracy, mean ± std over seeds {curve['seeds']}; gain: "
           f"{variants[0]} - {variants[-1]})"]
  for i, k in enumerate(curve["labels_per_class"]):
    means = [curve[v]["test_accuracy"]["mean"][i] for v in variants]
    stds = [curve[v]["test_accuracy"]["std"][i] for v in variants]
    lines.append(f"{k:>12} " + " ".join(f"{m:>7.3f} ± {s:.3f}" for m, s in zip(
        means, stds, strict=True)) + f" {means[0] - means[-1]:>+7.3f}")
  return "\n".join(lines)


def write_label_efficiency_png(curve: dict, out_path: str):
  """Test accuracy (mean ± std over seeds, error bars) against labels per class, log x."""
  with _png_axes(out_path) as ax:
    ks = curve["labels_per_class"]
    for variant, marker in zip(curve["variants"], "osD^v", strict=False):
      acc = curve[variant]["test_accuracy"]
      ax.errorbar(ks, acc["mean"], yerr=acc["std"], marker=marker, capsize=4,
                  label=curve.get("legend", {}).get(variant, variant))
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("labeled training images per class")
    ax.set_ylabel(f"test accuracy (mean ± std, {len(curve['seeds'])} seeds)")
    ax.legend()
    ax.grid(alpha=0.3)
