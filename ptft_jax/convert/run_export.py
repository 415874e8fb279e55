"""A fine-tuned ptft_jax run -> a Hugging Face directory, by the run's backbone and task.

What `python -m ptft_jax.convert export-hf --workdir RUN --out DIR` does.

  gpt backbone, a causal-LM task (causal_lm, sft, or any task config with `tied`)
      -> a HF *ForCausalLM directory (gpt2 / llama / mistral / qwen2 / gemma), or with
         `adapter_only` the LoRA adapters in HF PEFT format: `convert.decoder_export`.
  bert backbone, text_classification
      -> BertForSequenceClassification: the run's `config.json` gives the model and the
         task, `labels.json` the class names and the vocabulary, and `checkpoints/` (or
         `best/`) the weights. A LoRA run's latest checkpoint has its adapters merged first.

convert may not import ptft_jax.inference (tests/unit/test_layout.py), so the
checkpoint choice is `train.checkpoint.resolve_checkpoint`, as for predict and eval.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from ptft_jax.convert import decoder_export, hf_bert
from ptft_jax.data import labels_json
from ptft_jax.errors import CheckpointError, ConfigError, UserError
from ptft_jax.models.transformer import TransformerConfig
from ptft_jax.train import checkpoint, finetune

RUN_CONFIG_FILE = "config.json"
HEAD = "classifier"  # TextClassification.head_name; its Dense is also named "classifier"
CAUSAL_LM_TASKS = ("causal_lm", "sft")


@dataclasses.dataclass
class Exported:
  """What `export_run` wrote: the checkpoint step it read and the HF config.

  `kind`: "bert_classifier", "decoder" (a *ForCausalLM directory) or "adapter" (a PEFT
  LoRA adapter; `hf_config` is then its adapter_config.json). `decoder`: the details of a
  decoder export (model_type, files, where the tokenizer came from), else None.
  """

  step: int
  checkpoint: str  # "latest", "best" or the step
  hf_config: dict
  kind: str = "bert_classifier"
  decoder: decoder_export.DecoderExport | None = None


def _read_run_config(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  if not os.path.isfile(path):
    raise ConfigError(f"--workdir {workdir}: no {RUN_CONFIG_FILE} (not a ptft_jax run; for a "
                      "staged config, name one stage's directory, e.g. RUN/<stage>)")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path}: cannot parse: {(str(e).splitlines() or ['?'])[0]}") from None


def _check_run(workdir: str, config: dict[str, Any]) -> None:
  """One-line errors for runs that are not a BERT text classifier with a cls-pooled head."""
  if "stages" in config:
    raise ConfigError(f"--workdir {workdir} holds a staged run; name one stage's directory, "
                      f"one of {sorted(config['stages'])}")
  task = config.get("task", {}).get("name")
  if task != "text_classification":
    raise ConfigError(f"--workdir {workdir}: task {task!r} is not 'text_classification'; "
                      "export-hf writes BertForSequenceClassification from a fine-tuned text "
                      "classifier run (and causal LMs: causal_lm / sft on a gpt backbone)")
  model = config.get("model", {}).get("name")
  if model != "bert":
    raise ConfigError(f"--workdir {workdir}: model {model!r} is not 'bert'; export-hf "
                      "writes BERT (config.model.name='bert') runs only")
  pooling = config["task"].get("pooling", "cls")
  if pooling != "cls":
    raise ConfigError(f"--workdir {workdir}: config.task.pooling={pooling!r} has no HF "
                      "BertForSequenceClassification equivalent (it pools the [CLS] state with "
                      "the tanh pooler); export-hf needs pooling='cls'")


def _transformer_config(workdir: str, model: dict[str, Any]) -> TransformerConfig:
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if k != "name"}
  try:
    return TransformerConfig(**fields)
  except TypeError as e:
    raise ConfigError(f"--workdir {workdir}: config.model is not a TransformerConfig: "
                      f"{e}") from None


def _load_params(workdir: str, which: str) -> tuple[dict, int]:
  """The run's params (LoRA adapters merged) as host numpy arrays, and the step."""
  where, step, _ = checkpoint.resolve_checkpoint(workdir, which)
  loaded, _ = checkpoint.load_params(where, step=step)
  params = loaded["params"]
  if "lora" in params:  # adapters beside the base kernels: merge with the run's alpha
    if step != checkpoint.complete_steps(where)[-1]:
      raise CheckpointError(
          f"--checkpoint={which}: step {step} of this LoRA run holds unmerged adapters; "
          "export --checkpoint=latest or --checkpoint=best")
    loaded, _ = finetune.load_pretrained(where)
    params = loaded["params"]
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params), step


def _labels_and_vocab(workdir: str, config: dict[str, Any], num_classes: int):
  """(label names, vocab.txt path, lowercase) from labels.json, else from config.json."""
  record = labels_json.read_labels_json(workdir) or {}
  tokenizer = config.get("data", {}).get("tokenizer", {})
  names = [str(n) for n in record.get("label_names", ())]
  if len(names) != num_classes:  # runs older than labels.json name classes by id
    names = [str(i) for i in range(num_classes)]
  # labels.json names the run's own copy relative to the run (older runs: an absolute path).
  vocab = record.get("vocab") or tokenizer.get("vocab", "")
  vocab = os.path.join(workdir, vocab) if vocab else ""
  if not vocab or not os.path.isfile(vocab):
    raise CheckpointError(
        f"--workdir {workdir}: the run's vocab.txt {vocab or '(none recorded)'} is not there "
        f"({labels_json.LABELS_FILE} 'vocab', config.data.tokenizer.vocab); export-hf copies it")
  lowercase = bool(record.get("lowercase", tokenizer.get("lowercase", True)))
  return names, vocab, lowercase


def is_causal_lm(config: dict[str, Any]) -> bool:
  """A run config of a decoder LM: a gpt backbone with causal_lm / sft (or a task config
  with `tied`, as the causal-LM tasks have)."""
  task = config.get("task") or {}
  return (config.get("model", {}).get("name") == "gpt"
          and (task.get("name") in CAUSAL_LM_TASKS or "tied" in task))


def export_run(workdir: str | os.PathLike, out_dir: str | os.PathLike,
               which: str | int = "latest", *, adapter_only: bool = False,
               max_shard_size: int | str = decoder_export.DEFAULT_MAX_SHARD_SIZE,
               dtype: str = "float32", base_model: str | None = None,
               mesh=None) -> Exported:
  """Writes run `workdir`'s checkpoint `which` as a Hugging Face directory.

  Args:
    workdir: a decoder run (`gpt` backbone, causal_lm / sft; see `convert.decoder_export`)
      or a `text_classification` run on a `bert` backbone with `config.task.pooling='cls'`
      (e.g. `configs/glue.py:task=sentiment,model=tiny`).
    out_dir: the HF directory (see `hf_bert.export_hf_classifier`,
      `decoder_export.export_hf_decoder`); must not be the run itself.
    which: `latest`, `best` or a step number.
    adapter_only: decoders: the LoRA adapters alone, in HF PEFT format.
    max_shard_size: decoders: larger weights go to several files + an index.
    dtype: decoders: float32 (default), bfloat16 or float16 tensors.
    base_model: adapters: `base_model_name_or_path` (default: the imported model's
      `_name_or_path`, else the run's init workdir).
    mesh: decoders: where the params are restored (default: all devices on fsdp).

  Raises one-line UserErrors for other runs, missing checkpoints or vocabularies.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  out_dir = os.path.abspath(os.fspath(out_dir))
  if out_dir == workdir or os.path.isdir(checkpoint.checkpoint_dir(out_dir)):
    raise UserError(f"--out {out_dir} is a run directory; choose a new directory for the export")
  config = _read_run_config(workdir)
  if "stages" not in config and is_causal_lm(config):
    which = str(which)
    where, step, _ = checkpoint.resolve_checkpoint(workdir, which)
    done = decoder_export.export_decoder_run(
        workdir, config, out_dir, where=where, step=step, adapter_only=adapter_only,
        max_shard_size=max_shard_size, dtype=dtype, base_model=base_model, mesh=mesh)
    return Exported(step=step, checkpoint=which, hf_config=done.config,
                    kind="adapter" if done.adapter else "decoder", decoder=done)
  if adapter_only:
    raise UserError(f"--adapter-only: {workdir} is not a decoder run (config.model.name "
                    "'gpt' with task causal_lm or sft); it applies to decoder LoRA runs")
  _check_run(workdir, config)
  model_config = _transformer_config(workdir, config["model"])
  which = str(which)
  params, step = _load_params(workdir, which)
  head = params.get("heads", {}).get(HEAD, {}).get(HEAD)
  if head is None:
    raise CheckpointError(f"--workdir {workdir}: the checkpoint has no heads/{HEAD}/{HEAD} "
                          "params (not a text classifier's checkpoint)")
  names, vocab, lowercase = _labels_and_vocab(workdir, config, int(np.shape(head["bias"])[0]))
  hf_config = hf_bert.export_hf_classifier(
      model_config, params["backbone"], head, out_dir, label_names=names, vocab_file=vocab,
      lowercase=lowercase,
      classifier_dropout=float(config["task"].get("head_dropout_rate", 0.1)))
  return Exported(step=step, checkpoint=which, hf_config=hf_config)
