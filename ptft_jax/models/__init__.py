"""Model families. `build_model(config, heads)` picks a backbone by `config.model.name`.

`bert_encode(config, params, input_ids, attention_mask, token_type_ids)` runs a
BertEncoder's params as a plain function (e.g. weights from `load_hf_bert`).
"""

import flax.linen as nn
import ml_collections

from ptft_jax.errors import ConfigError
from ptft_jax.models.base import Model
from ptft_jax.models.cnn import CnnBackbone
from ptft_jax.models.heads import ClassifierHead, DecoderHead, ProjectionHead
from ptft_jax.models.mlp import MlpBackbone
from ptft_jax.models.resnet import ResNet
from ptft_jax.models.rnn import RnnBackbone
from ptft_jax.models.transformer import BertEncoder, GptDecoder, TransformerConfig, bert_encode

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


__all__ = [
    "BACKBONES", "ClassifierHead", "CnnBackbone", "DecoderHead", "MlpBackbone", "Model",
    "ProjectionHead", "build_backbone", "build_model",
    "ResNet", "RnnBackbone", "bert_encode",
]
