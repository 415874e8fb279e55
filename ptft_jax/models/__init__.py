"""Model families. `build_model(config, heads)` picks a backbone by `config.model.name`.

`bert_encode(config, params, input_ids, attention_mask, token_type_ids)` runs a
BertEncoder's params as a plain function (e.g. weights from `load_hf_bert`);
`causal_lm_logits(model_config, params, input_ids, attention_mask)` does the same for
a decoder and its LM head (e.g. weights from `ptft_jax.convert.load_hf`);
`image_features(model_config, variables, images)` runs an image backbone (ResNet, ViT) in
eval mode (e.g. weights from `ptft_jax.convert.load_vision`).
"""

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ptft_jax.errors import ConfigError
from ptft_jax.models.base import Model
from ptft_jax.models.cnn import CnnBackbone
from ptft_jax.models.heads import ClassifierHead, DecoderHead, ProjectionHead
from ptft_jax.models.mlp import MlpBackbone
from ptft_jax.models.resnet import ResNet
from ptft_jax.models.rnn import RnnBackbone
from ptft_jax.models.transformer import BertEncoder, GptDecoder, TransformerConfig, bert_encode
from ptft_jax.models.vit import ViT, resize_for_transfer

BACKBONES = {"mlp": MlpBackbone, "cnn": CnnBackbone}


def bert(**fields) -> BertEncoder:
  """A BertEncoder from TransformerConfig fields (defaults: BERT-base)."""
  return BertEncoder(TransformerConfig(**fields))


def gpt(**fields) -> GptDecoder:
  """A GptDecoder from TransformerConfig fields (pre-norm, causal, no token types, no pooler)."""
  fields = dict(causal=True, pre_norm=True, type_vocab_size=0, pooler=False) | fields
  return GptDecoder(TransformerConfig(**fields))


BACKBONES["bert"] = bert
BACKBONES["gpt"] = gpt
BACKBONES["resnet"] = ResNet
BACKBONES["rnn"] = RnnBackbone
BACKBONES["vit"] = ViT


def build_backbone(model_config: ml_collections.ConfigDict) -> nn.Module:
  """Instantiates `BACKBONES[model_config.name]` with the remaining keys as arguments."""
  name = model_config.name
  if name not in BACKBONES:
    raise ConfigError(
        f"config.model.name: unknown model {name!r}; choose one of {sorted(BACKBONES)}")
  kwargs = {k: v for k, v in model_config.items() if k != "name"}
  for k, v in kwargs.items():
    if isinstance(v, list):
      kwargs[k] = tuple(v)
  try:
    return BACKBONES[name](**kwargs)
  except TypeError as e:
    raise ConfigError(f"config.model: bad keys for model {name!r}: {e}") from None


def build_model(model_config: ml_collections.ConfigDict, heads: dict[str, nn.Module]) -> Model:
  return Model(backbone=build_backbone(model_config), heads=heads)


def lm_head_params(params: Mapping[str, Any]) -> Mapping[str, Any] | None:
  """The untied LM head's params (`heads/lm`: `output/kernel` [hidden, vocab]) or None (tied)."""
  head = (params.get("heads") or {}).get("lm") or {}
  return head if "output" in head else None


def lm_logits(features: Mapping[str, jax.Array], head: Mapping[str, Any] | None) -> jax.Array:
  """`[batch, seq, vocab]` float32 logits from a decoder's features and `lm_head_params`."""
  from ptft_jax.models.heads import CausalLMHead

  if head is None:
    return CausalLMHead(tied=True).apply({}, features, {}, train=False)
  return CausalLMHead(tied=False).apply({"params": head}, features, {}, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _causal_lm_logits(backbone, params, input_ids, attention_mask):
  features = backbone.apply({"params": params["backbone"]},
                            {"input_ids": input_ids, "attention_mask": attention_mask},
                            train=False)
  return lm_logits(features, lm_head_params(params))


def causal_lm_logits(
    model_config: ml_collections.ConfigDict,
    params: Mapping[str, Any],
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
) -> jax.Array:
  """Next-token logits of a decoder: `[batch, seq, vocab]` float32.

  Args:
    model_config: `config.model` of a decoder (`name="gpt"` + TransformerConfig fields),
      e.g. from `ptft_jax.convert.load_hf`.
    params: `{"backbone": {...}, "heads": {"lm": {"output": {"kernel"}}}}`; without an
      `heads/lm/output` the output layer is tied to the word embeddings.
    input_ids: `[batch, seq]` int.
    attention_mask: `[batch, seq]`, 1 = real token (default: all ones); positions count
      from the first column, so pad on the right.
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  backbone = build_backbone(ml_collections.ConfigDict(dict(model_config)))
  return _causal_lm_logits(backbone, params, input_ids, jnp.asarray(attention_mask, jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def _image_features(backbone, variables, images):
  return backbone.apply(variables, {"image": images}, train=False)["features"]


def image_features(
    model_config: ml_collections.ConfigDict,
    variables: Mapping[str, Any],
    images: jax.Array,
) -> jax.Array:
  """Pooled features of an image backbone in eval mode: `[batch, features]` float32.

  Args:
    model_config: `config.model` of an image backbone (`name="resnet"` or `"vit"` + its
      fields), e.g. from `ptft_jax.convert.load_vision`.
    variables: `{"params": {"backbone": ...}, "batch_stats": {"backbone": ...}}` (ResNet's
      BatchNorm running statistics; none for a ViT); heads are ignored.
    images: `[batch, h, w, c]` float, already normalized as the weights expect (the
      workdir's preprocessing.json). ResNet: the globally pooled last stage (2048-d for
      ResNet-50); ViT: the pre-logits (class token or mean of the patches, normalized).
  """
  backbone = build_backbone(ml_collections.ConfigDict(dict(model_config)))
  inner = {"params": variables["params"]["backbone"]}
  stats = (variables.get("batch_stats") or {}).get("backbone")
  if stats:
    inner["batch_stats"] = stats
  return _image_features(backbone, inner, jnp.asarray(images, jnp.float32))


__all__ = [
    "BACKBONES", "ClassifierHead", "CnnBackbone", "DecoderHead", "MlpBackbone", "Model",
    "ProjectionHead", "build_backbone", "build_model", "image_features",
    "ResNet", "RnnBackbone", "ViT", "bert_encode", "causal_lm_logits", "lm_head_params",
    "lm_logits", "resize_for_transfer",
]
