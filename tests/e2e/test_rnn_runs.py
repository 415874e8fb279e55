"""LSTM / GRU backbones: shapes, masked padding, packed documents, the rnn config end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptft_jax import train
from ptft_jax.models import build_model
from ptft_jax.models.heads import CausalLMHead, SequenceClassificationHead
from ptft_jax.train import checkpoint, reports
from tests.helpers import load_config

pytestmark = pytest.mark.usefixtures("fast_prng_compile")


# Per layer (flax cells): LSTM 4 * (in * h) + 4 * (h * h + h); GRU 3 * (in * h + h) + 3 * h * h + h.


def test_bidirectional_finetune_loads_what_fits_from_the_lm(tmp_path):
  """Transfer patterns of `bidirectional`: the embedding and the first forward layer."""
  config = load_config("rnn", "cell=gru,bidirectional,tiny")
  pre, fine = config.stages.pretrain, config.stages.finetune
  assert fine.model.bidirectional and not pre.model.bidirectional
  batch = {"input_ids": jnp.zeros((2, 5), jnp.int32)}

  def zeros(model_config, heads):
    model = build_model(model_config, heads)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))
    variables = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return {"params": variables["params"], "model_state": {}}

  source = zeros(pre.model, {"lm": CausalLMHead()})
  target = zeros(fine.model, {"classifier": SequenceClassificationHead(num_classes=2)})
  _, report = checkpoint.transfer(target, source, load=tuple(fine.init.load),
                                  skip=tuple(fine.init.skip))
  loaded = {p.split("/")[2] for p in report["loaded"]}
  assert loaded == {"embed", "layer_0_forward"}
  assert "params/backbone/layer_1_forward/cell/ir/kernel" in report["ignored"]


def test_lstm_config_pretrains_an_lm_and_fine_tunes_a_classifier_offline(tmp_path):
  config = load_config("rnn", "tiny")
  for stage in config.stages.values():
    stage.train.tensorboard = False
  config.stages.pretrain.train.eval_every = 0  # train metrics only: one compile less
  config.stages.pretrain.eval_splits = ()
  result = train.run(config, str(tmp_path))
  lm = reports.read_metrics(str(tmp_path / "pretrain"), split="train")
  assert [r["step"] for r in lm] == [2, 3]
  assert all(1 < r["perplexity"] < 2 * 4096 and 0 <= r["accuracy"] <= 1 for r in lm)
  report = json.loads((tmp_path / "finetune" / "transfer_report.json").read_text())
  assert len(report["loaded"]) == 25  # embedding + 2 layers x 12 LSTM cell leaves
  assert report["initialized"] == ["params/heads/classifier/classifier/bias",
                                   "params/heads/classifier/classifier/kernel"]
  test = result["stages"]["finetune"]["test"]
  assert 0.0 <= test["accuracy"] <= 1.0 and np.isfinite(test["loss"])
  fine, _ = checkpoint.load_params(str(tmp_path / "finetune"))
  assert fine["params"]["backbone"]["layer_1_forward"]["cell"]["hi"]["kernel"].shape == (32, 32)
