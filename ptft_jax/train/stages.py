"""A config's stages, run in order: pretrain -> fine-tune (and the comparisons beside it).

A config with `config.stages` is a small pipeline: each stage is a config of
its own, run by `loop.train_and_evaluate` in `<workdir>/<stage>`. A stage's
`init.pretrained_workdir` of the form "@name" (or "@name/best") points at the
workdir of the earlier stage `name`. A stage `{"import_hf_bert": DIR}` trains
nothing: it converts the Hugging Face BERT in DIR into its workdir (once).
"""

import contextlib
import os

import jax
import ml_collections
from jax.experimental.compilation_cache import compilation_cache

from ptft_jax.config.workdir import move_workdir_aside, to_dict, workdir_config_changes
from ptft_jax.errors import ConfigError
from ptft_jax.train import reports
from ptft_jax.train.loop import say, train_and_evaluate
from ptft_jax.utils import is_file, is_remote, make_dirs, write_json_atomic

COMPILATION_CACHE_DIR = "xla_cache"  # <workdir>/xla_cache: compiled programs the stages share


def run(config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False) -> dict:
  """Runs `config` in `workdir`: every stage of `config.stages` in order, or the config itself.

  Stages run in `config.stage_order` (ConfigDict sorts its keys). With stages,
  writes `<workdir>/summary.json` with each classification stage's test accuracy
  and macro-F1, and `<workdir>/validation_curves.png`. Every stage's config is
  checked against the run already in `workdir` before any trains; with
  `overwrite` a different run is moved aside as a whole (`<workdir>.old-<timestamp>`).
  Returns the stage's final metrics, or {"stages": {name: metrics}, "summary": ...}.
  """
  if "stages" not in config:
    return train_and_evaluate(config, workdir, overwrite=overwrite)
  order = list(config.get("stage_order", ())) or list(config.stages)
  stages = {name: _stage_config(config, name, workdir) for name in order}
  changes = [f"stage {name}: {c}" for name, stage in stages.items() if "import_hf_bert" not in stage
             for c in workdir_config_changes(stage, os.path.join(workdir, name))]
  if changes and not overwrite:
    raise ConfigError(
        f"workdir {workdir} holds a run with a different config ({'; '.join(changes[:5])}); "
        "use a new --workdir, or pass --overwrite to move the old run aside")
  if changes:
    say(f"--overwrite: moved the earlier run in {workdir} to {move_workdir_aside(workdir)}")
  make_dirs(workdir)
  results = {}
  with _compilation_cache(os.path.join(workdir, COMPILATION_CACHE_DIR)):
    for name, stage in stages.items():
      if "import_hf_bert" in stage:
        _import_stage(stage.import_hf_bert, os.path.join(workdir, name))
        continue
      say(f"=== stage {name} ===")
      results[name] = train_and_evaluate(stage, os.path.join(workdir, name))
  summary = reports.summarize_stages(results)
  curve = None
  if config.get("report") == "label_efficiency":  # configs/label_efficiency.py
    curve = reports.label_efficiency(results, config.label_efficiency.to_dict())
    summary = {**summary, "label_efficiency": curve}
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    if curve:
      reports.write_label_efficiency_png(curve, os.path.join(workdir, "label_efficiency.png"))
      say(reports.format_label_efficiency(curve))
    else:
      say(reports.format_summary(summary))
      reports.write_validation_curves_png(workdir, list(summary),
                                          os.path.join(workdir, "validation_curves.png"))
    if config.get("report") == "trainable_params":  # configs/strategies.py
      say(reports.write_strategy_report(workdir, list(summary)))
  return {"stages": results, "summary": summary}


@contextlib.contextmanager
def _compilation_cache(directory: str):
  """XLA's persistent compilation cache in `directory` while the stages run.

  Stages of one config compile the same programs again and again (every seed and
  label budget of configs/label_efficiency.py fine-tunes the same model); the
  cache halves a staged run's wall time on the CPU. It is skipped when the user
  configured a cache already (`$JAX_COMPILATION_CACHE_DIR`), on several
  processes (each would write its own entries into one directory) and in a gs://
  workdir (a cache entry is read back at every compile: a network round trip each).
  """
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")
  old = {k: getattr(jax.config, k) for k in keys}
  if old["jax_compilation_cache_dir"] or jax.process_count() > 1 or is_remote(directory):
    yield
    return
  for key, value in zip(keys, (directory, 0, 0), strict=True):
    jax.config.update(key, value)
  compilation_cache.reset_cache()  # the cache object binds its directory when first used
  try:
    yield
  finally:
    for key, value in old.items():
      jax.config.update(key, value)
    compilation_cache.reset_cache()


def _stage_config(config: ml_collections.ConfigDict, name: str,
                  workdir: str) -> ml_collections.ConfigDict:
  """Stage `name` as a config of its own, with "@stage" references made paths."""
  if name not in config.stages:
    raise ConfigError(f"config.stage_order: no stage named {name!r} in config.stages")
  stage = ml_collections.ConfigDict(to_dict(config.stages[name]))
  if "import_hf_bert" in stage:
    return stage
  ref = stage.init.pretrained_workdir
  if ref.startswith("@"):  # "@name", or "@name/best" for that stage's best checkpoint
    if ref[1:].split("/")[0] not in config.stages:
      raise ConfigError(
          f"config.stages.{name}.init.pretrained_workdir: no stage named {ref[1:]!r}")
    stage.init.pretrained_workdir = os.path.join(workdir, ref[1:])
  return stage


def _import_stage(src: str, stage_dir: str):
  """Converts HF BERT weights into `stage_dir`, unless an earlier run already did."""
  from ptft_jax.convert import workdir as convert_workdir  # late: keeps `import` light

  if is_file(os.path.join(stage_dir, "model_config.json")):
    say(f"imported weights already in {stage_dir}")
    return
  config, heads = convert_workdir.import_hf_bert(src, stage_dir)
  say(f"imported {src} ({config.num_layers} layers, hidden {config.hidden_size}, "
      f"heads {heads or '-'}) -> {stage_dir}")
