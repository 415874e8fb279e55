"""Hugging Face BERT <-> ptft_jax BertEncoder params (safetensors only, no torch).

A HF BERT directory holds `config.json`, `model.safetensors` and usually
`vocab.txt` (an exported classifier also `tokenizer_config.json` and
`special_tokens_map.json`). Tensor names may carry a `bert.` prefix (BertForPreTraining,
BertForMaskedLM) or not (BertModel, sentence-transformers). HF Linear weights
are `[out, in]`; our Dense kernels are `[in, out]`.

Loading is strict: unsafe names, unexpected or missing tensors, non-float
dtypes, shape mismatches and a vocab.txt of the wrong size each raise a
one-line `CheckpointError`.

With a `placement` (param path -> target sharding), every tensor becomes a
`jax.Array` built by `jax.make_array_from_callback`: each device's callback
reads only its own slice from the memory-mapped file (`get_slice(name)[index]`,
the transpose of an `[out, in]` weight applied to that slice), so no process
ever holds a whole tensor on the host, let alone the whole model.
"""

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from ptft_jax.convert import safetensors_io
from ptft_jax.errors import CheckpointError, UserError
from ptft_jax.models import layout
from ptft_jax.models.heads import MaskedLMHead, NextSentenceHead
from ptft_jax.models.transformer import BertEncoder, TransformerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                  "cls_token": "[CLS]", "mask_token": "[MASK]"}

Params = safetensors_io.Params
# (param path "backbone/layer_0/attention/query/kernel", shape in our layout) -> Sharding.
Placement = safetensors_io.Placement
# Non-parameter buffers that some HF versions save; skipped.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_LEAVES = {"kernel": ("weight", True), "embedding": ("weight", False),
           "scale": ("weight", False), "bias": ("bias", False)}
_EMBEDDING_MODULES = {
  "word_embeddings": "embeddings.word_embeddings",
  "position_embeddings": "embeddings.position_embeddings",
  "token_type_embeddings": "embeddings.token_type_embeddings",
  "layer_norm": "embeddings.LayerNorm",
}
_LAYER_MODULES = {
  ("attention", "query"): "attention.self.query",
  ("attention", "key"): "attention.self.key",
  ("attention", "value"): "attention.self.value",
  ("attention", "out"): "attention.output.dense",
  ("attention_norm",): "attention.output.LayerNorm",
  ("mlp", "intermediate"): "intermediate.dense",
  ("mlp", "output"): "output.dense",
  ("output_norm",): "output.LayerNorm",
}
_HEAD_MODULES = {
  "mlm": {("transform", "dense"): "cls.predictions.transform.dense",
          ("transform", "layer_norm"): "cls.predictions.transform.LayerNorm",
          (): "cls.predictions"},
  "nsp": {("dense",): "cls.seq_relationship"},
}
# Tied copies of other tensors; checked for equality and skipped.
_TIED = {"cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
         "cls.predictions.decoder.bias": "cls.predictions.bias"}


def _hf_name(path: tuple[str, ...], head: str | None = None) -> tuple[str, bool]:
  """Our param path -> (HF tensor name without `bert.` prefix, transpose?)."""
  *module, leaf = path
  suffix, transpose = _LEAVES[leaf]
  if head is not None:
    prefix = _HEAD_MODULES[head][tuple(module)]
  elif module[0] == "embeddings":
    prefix = _EMBEDDING_MODULES[module[1]]
  elif module[0] == "pooler":
    prefix = "pooler.dense"
  else:
    layer = int(module[0].removeprefix("layer_"))
    prefix = f"encoder.layer.{layer}.{_LAYER_MODULES[tuple(module[1:])]}"
  return f"{prefix}.{suffix}", transpose


_flatten = safetensors_io.flatten
_set = safetensors_io.set_path
_short_list = safetensors_io.short_list
_first_line = safetensors_io.first_line


def _param_shapes(config: TransformerConfig, head: str | None = None) -> dict[tuple, tuple]:
  """Param path -> shape, from the module definitions (no compute)."""
  config = dataclasses.replace(config, scan_layers=False)  # HF names each layer: looped paths
  ids = jnp.zeros((1, 1), jnp.int32)
  if head is None:
    init = lambda: BertEncoder(config).init(jax.random.key(0), {"input_ids": ids}, train=False)
  else:
    module = {"mlm": MaskedLMHead(), "nsp": NextSentenceHead()}[head]
    h = config.hidden_size
    features = {"sequence": jnp.zeros((1, 1, h)), "pooled": jnp.zeros((1, h)),
                "word_embeddings": jnp.zeros((config.vocab_size, h))}
    batch = {"masked_positions": ids}
    init = lambda: module.init(jax.random.key(0), features, batch, train=False)
  shapes = jax.eval_shape(init)["params"]
  return {path: tuple(leaf.shape) for path, leaf in _flatten(shapes)}


def _spec(config: TransformerConfig, head: str | None = None):
  """[(hf name, param path, transpose, expected HF shape)] for a backbone or head."""
  out = []
  for path, shape in _param_shapes(config, head).items():
    name, transpose = _hf_name(path, head)
    out.append((name, path, transpose, shape[::-1] if transpose else shape))
  return out


def config_from_hf(
    hf: Mapping[str, Any], path: str = CONFIG_FILE, **overrides
) -> TransformerConfig:
  """HF BertConfig dict -> TransformerConfig; `overrides` replace fields."""
  model_type = hf.get("model_type", "bert")
  if model_type != "bert":
    raise CheckpointError(f"{path}: model_type {model_type!r} is not supported (only 'bert')")
  for key, want in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
    if hf.get(key, want) != want:
      raise CheckpointError(f"{path}: {key} {hf[key]!r} is not supported (only {want!r})")
  try:
    fields = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
    )
  except KeyError as e:
    raise CheckpointError(f"{path}: missing key {e.args[0]!r}") from None
  fields.update(
      type_vocab_size=hf.get("type_vocab_size", 2),
      dropout_rate=hf.get("hidden_dropout_prob", 0.1),
      attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
      causal=False, pre_norm=False,
  )
  fields.update(overrides)
  return TransformerConfig(**fields)


def config_to_hf(config: TransformerConfig) -> dict[str, Any]:
  """TransformerConfig -> HF BertConfig dict (for `config.json`)."""
  if config.pre_norm or config.causal or config.type_vocab_size < 1:
    raise UserError(
        "export_hf_bert needs a BERT config (pre_norm=False, causal=False, type_vocab_size>0); "
        f"got pre_norm={config.pre_norm}, causal={config.causal}, "
        f"type_vocab_size={config.type_vocab_size}")
  return {
      "architectures": ["BertModel"], "model_type": "bert",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
      "intermediate_size": config.intermediate_size, "hidden_act": "gelu",
      "hidden_dropout_prob": config.dropout_rate,
      "attention_probs_dropout_prob": config.attention_dropout_rate,
      "max_position_embeddings": config.max_position_embeddings,
      "type_vocab_size": config.type_vocab_size, "initializer_range": 0.02,
      "layer_norm_eps": config.layer_norm_eps, "pad_token_id": 0,
      "position_embedding_type": "absolute",
  }


def _count_lines(path: str) -> int:
  with open(path, "rb") as f:
    data = f.read()
  return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _check_vocab(path: str, vocab_size: int) -> None:
  lines = _count_lines(path)
  if lines != vocab_size:
    raise CheckpointError(f"{path}: {lines} lines but config vocab_size is {vocab_size}")


def _read_config(model_dir: str) -> dict[str, Any]:
  return safetensors_io.read_json(os.path.join(model_dir, CONFIG_FILE), "a HF BERT directory")


def _normalized_names(path: str, names: list[str]) -> dict[str, str]:
  """Name without `bert.` prefix (and gamma/beta -> weight/bias) -> name in the file."""
  prefix = "bert." if any(n.startswith("bert.") for n in names) else ""
  out = {}
  for name in names:
    norm = name.removeprefix(prefix)
    norm = norm.replace("LayerNorm.gamma", "LayerNorm.weight")
    norm = norm.replace("LayerNorm.beta", "LayerNorm.bias")
    if norm in out:
      raise CheckpointError(f"{path}: tensors {out[norm]!r} and {name!r} are the same parameter")
    out[norm] = name
  return out


def _tensors(model_dir: str) -> safetensors_io.Tensors:
  """Validated view of `model.safetensors` (or its index): names without the `bert.` prefix."""
  return safetensors_io.Tensors(model_dir, _normalized_names)


def _gather(tensors: safetensors_io.Tensors, spec, placement: Placement | None = None,
            prefix: str = "") -> Params:
  """The params of `spec`: host float32 arrays, or jax.Arrays read slice by slice into
  `placement(prefix + path, shape)`."""
  entries = [safetensors_io.Entry(name, path, tuple(shape), transpose)
             for name, path, transpose, shape in spec]
  return safetensors_io.gather(tensors, entries, placement, prefix)


def _load(model_dir: str, overrides, placement: Placement | None = None, *,
          backbone: bool = True) -> tuple[TransformerConfig, Params, dict[str, Params]]:
  model_dir = os.fspath(model_dir)
  hf = _read_config(model_dir)
  with _tensors(model_dir) as tensors:
    config, params, heads = _load_tensors(model_dir, hf, tensors, overrides, placement, backbone)
  if config.scan_layers:  # HF is looped; a scan_layers=True override asks for `layers/...`
    params = layout.loop_to_scan(params)
  return config, params, heads


def _load_tensors(model_dir, hf, tensors, overrides, placement=None, backbone=True):
  present = set(tensors.names)
  pooler = bool(present & {"pooler.dense.weight", "pooler.dense.bias"})
  config = config_from_hf(
      hf, os.path.join(model_dir, CONFIG_FILE), **{"pooler": pooler, **overrides})
  vocab = os.path.join(model_dir, VOCAB_FILE)
  if os.path.isfile(vocab):
    _check_vocab(vocab, config.vocab_size)

  backbone_spec = _spec(config)
  head_specs = {}
  for head, modules in _HEAD_MODULES.items():
    prefixes = tuple(p + "." for p in modules.values())
    if any(n.startswith(prefixes) and n not in _TIED for n in present):
      head_specs[head] = _spec(config, head)
  expected = {s[0] for spec in (backbone_spec, *head_specs.values()) for s in spec}
  unexpected = present - expected - set(_BUFFERS) - set(_TIED)
  if unexpected:
    raise CheckpointError(
        f"{tensors.path}: unexpected tensors: {_short_list(tensors.names[n] for n in unexpected)}")
  missing = expected - present
  if missing:
    raise CheckpointError(f"{tensors.path}: missing tensors: {_short_list(missing)}")

  params = _gather(tensors, backbone_spec, placement, "backbone/") if backbone else {}
  heads = {head: _gather(tensors, spec, placement, f"heads/{head}/")
           for head, spec in head_specs.items()}
  for tied, source in _TIED.items():
    if tied in present and source in present:
      if not tensors.equal(tied, source):
        raise CheckpointError(
            f"{tensors.path}: {tensors.names[tied]!r} differs from {tensors.names[source]!r}; "
            "untied MLM output layers are not supported")
  return config, params, heads


def load_hf_bert(model_dir: str | os.PathLike, *, placement: Placement | None = None,
                 **overrides) -> tuple[TransformerConfig, Params]:
  """Reads a HF BERT directory into a BertEncoder config and backbone params.

  Args:
    model_dir: directory with `config.json`, `model.safetensors` and,
      optionally, `vocab.txt` (its line count must equal vocab_size).
    placement: optional `(path, shape) -> Sharding`, called with the Model path
      (`backbone/layer_0/attention/query/kernel`) and our shape (`[in, out]`);
      each leaf is then a jax.Array read slice by slice into that sharding.
    **overrides: TransformerConfig fields to replace (e.g. `dtype="bfloat16"`,
      `attention_impl="einsum"`, `dropout_rate=0.0`).

  Returns:
    `(config, params)`: params is the backbone tree (`embeddings/...`,
    `layer_{i}/...`, `pooler/dense/...` when the file has a pooler) of float32
    numpy arrays (jax.Arrays with a `placement`); `config.pooler` says whether
    the pooler was there. With `scan_layers=True` the layers come stacked
    under `layers/...` ([num_layers] leading axis).
  """
  config, params, _ = _load(model_dir, overrides, placement)
  return config, params


def load_hf_bert_heads(model_dir: str | os.PathLike, *,
                       placement: Placement | None = None) -> dict[str, Params]:
  """Pretraining heads in the file: `{"mlm": ..., "nsp": ...}` (those present).

  `mlm` is MaskedLMHead params (`transform/dense`, `transform/layer_norm`,
  `bias`) from `cls.predictions.*`; `nsp` is NextSentenceHead params (`dense`)
  from `cls.seq_relationship.*`. The same strict checks as `load_hf_bert`;
  `placement` as there (paths `heads/mlm/...`).
  """
  return _load(model_dir, {}, placement, backbone=False)[2]


def load_hf_bert_model(model_dir: str | os.PathLike, *, placement: Placement | None = None,
                       **overrides) -> tuple[TransformerConfig, Params]:
  """Backbone and heads in one read: `(config, {"backbone": ..., "heads": {"mlm", "nsp"}})`.

  The Model layout (`ptft_jax.models.base.Model` paths); arguments as in `load_hf_bert`.
  """
  config, params, heads = _load(model_dir, overrides, placement)
  return config, {"backbone": params, "heads": heads}


def _export_tensors(config, params, spec, tree_name: str, prefix: str) -> dict[str, np.ndarray]:
  flat = {path: value for path, value in _flatten(params)}
  want = {s[1] for s in spec}
  if set(flat) != want:
    extra = ["/".join(p) for p in set(flat) - want]
    missing = ["/".join(p) for p in want - set(flat)]
    raise CheckpointError(
        f"{tree_name} params do not match the config: missing {_short_list(missing) or '-'}; "
        f"unexpected {_short_list(extra) or '-'}")
  out = {}
  for name, path, transpose, shape in spec:
    value = np.asarray(flat[path], np.float32)
    if transpose:
      value = value.T
    if value.shape != shape:
      raise CheckpointError(
          f"{tree_name} param {'/'.join(path)} has HF shape {value.shape}, expected {shape}")
    out[prefix + name] = np.ascontiguousarray(value)
  return out


def _looped(config: TransformerConfig, params: Mapping[str, Any]) -> Mapping[str, Any]:
  """Backbone params with `layer_{i}/...` (HF's layout): a scanned `layers/...` is split."""
  return layout.scan_to_loop(params, config.num_layers) if layout.is_scanned(params) else params


def export_hf_bert(
    config: TransformerConfig,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    *,
    heads: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
  """Writes `config.json` + `model.safetensors` (+ `vocab.txt`) for HF transformers.

  `BertModel.from_pretrained(out_dir)` loads the result. With `heads`
  (`{"mlm": ..., "nsp": ...}`, either optional) tensors get the `bert.` prefix
  plus `cls.*`, as BertForPreTraining / BertForMaskedLM expect.

  Args:
    config: a BERT config (post-norm, non-causal, with token types).
    params: backbone params (numpy or jax arrays), as from `load_hf_bert`
      (looped `layer_{i}` or scanned `layers`).
    out_dir: created if needed; existing files of the same names are replaced.
    vocab_file: copied to `out_dir/vocab.txt` after checking its line count.
    heads: optional MaskedLMHead / NextSentenceHead params.
  """
  hf_config = config_to_hf(config)
  params = _looped(config, params)
  heads = dict(heads or {})
  unknown = set(heads) - set(_HEAD_MODULES)
  if unknown:
    raise UserError(f"export_hf_bert heads {sorted(unknown)} are not among {sorted(_HEAD_MODULES)}")
  prefix = "bert." if heads else ""
  tensors = _export_tensors(config, params, _spec(config), "backbone", prefix)
  for head, head_params in heads.items():
    tensors.update(_export_tensors(config, head_params, _spec(config, head), head, ""))
  if heads:
    arch = "BertForPreTraining" if len(heads) == 2 else (
        "BertForMaskedLM" if "mlm" in heads else "BertForNextSentencePrediction")
    hf_config["architectures"] = [arch]
  if vocab_file is not None:
    _check_vocab(os.fspath(vocab_file), config.vocab_size)

  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(hf_config, f, indent=2)
  safetensors.numpy.save_file(
      tensors, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
  if vocab_file is not None:
    shutil.copyfile(vocab_file, os.path.join(out_dir, VOCAB_FILE))



def _vocab_ids(path: str) -> dict[str, int]:
  with open(path, encoding="utf-8") as f:
    return {line.rstrip("\n"): i for i, line in enumerate(f)}


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")


def export_hf_classifier(
    config: TransformerConfig,
    params: Mapping[str, Any],
    classifier: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    label_names: list[str],
    vocab_file: str | os.PathLike,
    lowercase: bool,
    classifier_dropout: float = 0.1,
) -> dict[str, Any]:
  """Writes a `BertForSequenceClassification` directory for HF transformers.

  `AutoModelForSequenceClassification.from_pretrained(out_dir)` and
  `AutoTokenizer.from_pretrained(out_dir)` load the result: `config.json`
  (with `id2label` / `label2id`), `model.safetensors` (`bert.*`, `classifier.*`),
  `vocab.txt`, `tokenizer_config.json` and `special_tokens_map.json`. HF pools
  with the tanh pooler, as SequenceClassificationHead(pooling="cls") on a
  backbone with a pooler does, so the logits are the same.

  Args:
    config: a BERT config with `pooler=True`.
    params: backbone params, including `pooler/dense`.
    classifier: the head's Dense: `{"kernel": [hidden, num_labels], "bias": [num_labels]}`.
    out_dir: created if needed; existing files of the same names are replaced.
    label_names: one distinct name per class, in class-id order.
    vocab_file: the run's vocab.txt (its line count must equal vocab_size).
    lowercase: whether the tokenizer lower-cases (and strips accents).
    classifier_dropout: the head's dropout rate (used by HF in training only).

  Returns:
    The `config.json` written.
  """
  if not config.pooler:
    raise UserError("export to BertForSequenceClassification needs a backbone with the pooler "
                    "(config.model.pooler=True): HF classifies the tanh-pooled [CLS] state")
  kernel = np.asarray(classifier["kernel"], np.float32)
  bias = np.asarray(classifier["bias"], np.float32)
  if kernel.shape != (config.hidden_size, len(label_names)) or bias.shape != kernel.shape[1:]:
    raise CheckpointError(
        f"classifier params {kernel.shape} / {bias.shape} do not match hidden size "
        f"{config.hidden_size} and {len(label_names)} labels {list(label_names)[:8]}")
  names = [str(n) for n in label_names]
  if len(set(names)) != len(names):
    raise UserError(f"label names are not distinct: {names}; HF's label2id needs one id per name")
  vocab_file = os.fspath(vocab_file)
  _check_vocab(vocab_file, config.vocab_size)

  params = _looped(config, params)
  tensors = _export_tensors(config, params, _spec(config), "backbone", "bert.")
  tensors["classifier.weight"] = np.ascontiguousarray(kernel.T)
  tensors["classifier.bias"] = np.ascontiguousarray(bias)
  hf_config = config_to_hf(config)
  vocab_ids = _vocab_ids(vocab_file)
  hf_config.update(
      architectures=["BertForSequenceClassification"],
      id2label={str(i): n for i, n in enumerate(names)},
      label2id={n: i for i, n in enumerate(names)},
      problem_type="single_label_classification",
      classifier_dropout=float(classifier_dropout),
      pad_token_id=vocab_ids.get(SPECIAL_TOKENS["pad_token"], 0),
  )
  # BertWordPieceTokenizer(lowercase=...) as ptft_jax builds it (clean_text, Chinese
  # characters split, accents stripped exactly when lower-casing).
  tokenizer_config = {
      "tokenizer_class": "BertTokenizer", "do_lower_case": bool(lowercase),
      "strip_accents": None, "tokenize_chinese_chars": True,
      "model_max_length": config.max_position_embeddings, **SPECIAL_TOKENS,
  }

  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  _write_json(os.path.join(out_dir, CONFIG_FILE), hf_config)
  safetensors.numpy.save_file(
      dict(sorted(tensors.items())), os.path.join(out_dir, WEIGHTS_FILE),
      metadata={"format": "pt"})
  vocab_out = os.path.join(out_dir, VOCAB_FILE)
  if not (os.path.exists(vocab_out) and os.path.samefile(vocab_file, vocab_out)):
    shutil.copyfile(vocab_file, vocab_out)
  _write_json(os.path.join(out_dir, TOKENIZER_CONFIG_FILE), tokenizer_config)
  _write_json(os.path.join(out_dir, SPECIAL_TOKENS_FILE), SPECIAL_TOKENS)
  return hf_config
