"""A model is a backbone plus a dict of named heads.

Parameter paths read `backbone/...` and `heads/<name>/...`, so fine-tuning keeps
the backbone paths and swaps the heads: transfer is "load these paths,
initialize those".

Contract shared by every model family:
  backbone(batch, *, train) -> features: dict[str, Array]
  head(features, batch, *, train) -> Array | dict[str, Array]
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax


class _Heads(nn.Module):
  """Holds the heads under `heads/<name>`; runs only the requested ones."""

  heads: Mapping[str, nn.Module]

  @nn.compact
  def __call__(self, features, batch, *, train: bool, names: Sequence[str] | None):
    outputs = {}
    for name, head in self.heads.items():
      if names is None or name in names:
        # clone(parent=self) binds the user's unbound head under our scope with
        # the dict key as its name, which gives the `heads/<name>/...` paths.
        outputs[name] = head.clone(parent=self, name=name)(features, batch, train=train)
    return outputs


class Model(nn.Module):
  """Backbone + named heads.

  Attributes:
    backbone: module mapping a batch dict to a features dict.
    heads: name -> head module; each maps (features, batch) to its output.
  """

  backbone: nn.Module
  heads: Mapping[str, nn.Module]

  @nn.compact
  def __call__(
      self, batch: Mapping[str, jax.Array], *, train: bool = False,
      heads: Sequence[str] | None = None,
  ) -> dict[str, jax.Array]:
    """Returns `{"features": features, <head name>: head output, ...}`.

    Args:
      batch: inputs, e.g. `{"image": [batch, h, w, c]}` or `{"input_ids": [batch, seq]}`.
      train: enables dropout / batch statistics updates.
      heads: which heads to run (all when None). Initialization runs all.
    """
    features = self.backbone(batch, train=train)
    outputs = _Heads(self.heads, name="heads")(features, batch, train=train, names=heads)
    return {"features": features, **outputs}

  @nn.nowrap
  def with_frozen_norms(self, trainable, model_state: dict) -> "Model":
    """This model, with its backbone's normalization adapted to what is frozen.

    `trainable` is a bool tree over params. A backbone opts in by defining
    `with_frozen_norms(trainable, model_state)` (ResNet: "auto" BatchNorms whose
    params are all frozen use their running averages); otherwise a no-op (the
    same object). Called at trace time, so it costs nothing per step.
    """
    adapt = getattr(self.backbone, "with_frozen_norms", None)
    if trainable is None or adapt is None:
      return self
    backbone = adapt(trainable, model_state)
    return self if backbone is self.backbone else self.clone(backbone=backbone)
