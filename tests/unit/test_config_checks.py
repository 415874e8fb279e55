"""Checks on what a config says: task keys a task never reads, and the transfer summary."""

import ml_collections
import pytest

from ptft_jax import base_config, tasks
from ptft_jax.data import dataset_info
from ptft_jax.errors import ConfigError
from ptft_jax.train.checkpoint import format_report
from tests.helpers import load_config

CONTRASTIVE_READS = "temperature, augment, projection_hidden, projection_dim"

# (configs/<name>.py, get_config argument): every config the repository ships.
SHIPPED = [
    ("quickstart", ""), ("quickstart", "pretrain=autoencoder,tiny"), ("strategies", "tiny"),
    ("glue", "task=sentiment"), ("rnn", "tiny"), ("bert", "tiny"), ("gpt", "tiny"),
    ("resnet", "tiny"), ("cifar10_cnn", "tiny"), ("mnist_mlp", "tiny"), ("minilm_text", "tiny"),
    ("digits", "mlp"), ("digits", "cnn"),
]


def _task(name: str, **keys) -> ml_collections.ConfigDict:
  """`base_config().task` (its defaults included) for task `name`, then `keys` set."""
  task = base_config().task
  task.name = name
  with task.unlocked():
    task.update(keys)
  return task


# --- task keys a task does not read ---------------------------------------------------------


def test_unread_key_with_a_value_is_an_error():
  with pytest.raises(ConfigError) as e:
    tasks.check_task_keys(_task("contrastive", mixup_alpha=0.2))
  assert str(e.value) == (
      f"config.task.mixup_alpha=0.2 is not read by task 'contrastive' (it reads: "
      f"{CONTRASTIVE_READS}); remove it")


def test_several_unread_keys_are_named_together():
  with pytest.raises(ConfigError) as e:
    tasks.check_task_keys(_task("text_classification", augment={"flip": True},
                                head_hidden_sizes=(32,)), "config.stages.finetune.task")
  assert str(e.value) == (
      "config.stages.finetune.task.augment={'flip': True}, "
      "config.stages.finetune.task.head_hidden_sizes=(32,) are not read by task "
      "'text_classification' (it reads: label_smoothing, pooling, head_dropout_rate); "
      "remove them")


def test_unread_key_outside_the_defaults_is_an_error():
  with pytest.raises(ConfigError, match=r"config.task.temperature=0.5 is not read by task "
                     r"'autoencoder' \(it reads: noise, dropout, head_hidden_sizes\)"):
    tasks.check_task_keys(_task("autoencoder", temperature=0.5))


def test_defaults_that_a_task_does_not_read_are_fine():
  for name in tasks.BUILDERS:
    tasks.check_task_keys(_task(name))  # label_smoothing=0.0, mixup_alpha=0.0, ... as default


def test_task_defaults_are_base_config_defaults():
  defaults = {k: v for k, v in base_config().task.items() if k != "name"}
  assert defaults == tasks.TASK_DEFAULTS


def test_unknown_task_name():
  with pytest.raises(ConfigError, match="config.task.name: unknown task 'clasification'"):
    tasks.check_task_keys(_task("clasification"))


def test_build_task_checks_the_keys():
  config = base_config()
  config.task = _task("contrastive", mixup_alpha=0.2)
  with pytest.raises(ConfigError, match="config.task.mixup_alpha=0.2 is not read"):
    tasks.build_task(config, dataset_info("digits"))


@pytest.mark.parametrize(("name", "arg"), SHIPPED)
def test_shipped_configs_set_only_keys_their_tasks_read(name, arg):
  config = load_config(name, arg)
  stages = config.stages if "stages" in config else {"": config}
  checked = 0
  for stage_name, stage in stages.items():
    if "import_hf_bert" in stage:
      continue
    tasks.check_task_keys(stage.task, f"config.stages.{stage_name}.task")
    checked += 1
  assert checked


class _Recorder(dict):
  """A task config that remembers every key a builder asks for."""

  def __init__(self, *args):
    super().__init__(*args)
    self.asked = []

  def get(self, key, default=None):
    self.asked.append(key)
    return super().get(key, default)

  def __getitem__(self, key):
    self.asked.append(key)
    return super().__getitem__(key)


def _text_info(fmt: str, label_type: str = "class"):
  from ptft_jax.data import text
  from ptft_jax.data.text.tokenizer import Vocab

  vocab = Vocab(path="", size=50, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)
  return text.TextInfo(name="x", format=fmt, seq_len=16, vocab=vocab, nsp=True,
                       label_type=label_type, label_names=("a", "b"))


def test_declared_reads_are_what_the_builders_read():
  infos = {"masked_lm": lambda: _text_info("sentence_pairs"),
           "causal_lm": lambda: _text_info("packed"),
           "sft": lambda: _text_info("sft"),
           "text_classification": lambda: _text_info("labeled"),
           "text_regression": lambda: _text_info("labeled", "float")}
  given = {"mae": {"patch_size": 2}}  # a key without a default
  for name, builder in tasks.BUILDERS.items():
    config = _Recorder(given.get(name, {}))
    builder(config, infos[name]() if name in infos else dataset_info("digits"))
    assert sorted(set(config.asked)) == sorted(tasks.READS[name]), name


# --- the transfer summary -------------------------------------------------------------------


def _layers(prefix: str, n: int) -> list[str]:
  return [f"{prefix}/layer_{i}/{m}/{p}" for i in range(n)
          for m in ("attention", "mlp") for p in ("bias", "kernel")]


def test_transfer_summary_groups_whole_subtrees():
  report = {"loaded": sorted(_layers("params/backbone", 6)),
            "initialized": ["params/heads/classifier/classifier/bias",
                            "params/heads/classifier/classifier/kernel"],
            "ignored": []}
  assert format_report(report) == (
      "  loaded 24: params/backbone/**\n"
      "  initialized 2: params/heads/classifier/classifier/**\n"
      "  ignored 0")


def test_transfer_summary_counts_groups_and_collapses_ignored_heads():
  report = {"loaded": sorted(["params/backbone/conv_0/kernel", "params/backbone/bn_0/scale",
                              "model_state/batch_stats/backbone/bn_0/mean",
                              "model_state/batch_stats/backbone/bn_0/var"]),
            "initialized": ["params/heads/classifier/kernel"],
            "ignored": sorted(["params/heads/mlm/bias", "params/heads/mlm/kernel",
                               "params/heads/nsp/kernel"])}
  assert format_report(report) == (
      "  loaded 4: model_state/batch_stats/backbone/bn_0/** (2), params/backbone/** (2)\n"
      "  initialized 1: params/heads/classifier/kernel\n"
      "  ignored 3: params/heads/**")


def test_transfer_summary_spells_out_a_partly_loaded_prefix():
  layers = _layers("params/backbone", 3)
  partial = [p for p in layers if "layer_1/mlp" in p]
  report = {"loaded": sorted(set(layers) - set(partial)),
            "initialized": sorted(partial + ["params/heads/classifier/kernel"]),
            "ignored": []}
  assert format_report(report) == (
      "  loaded 10: params/backbone/layer_0/** (4), params/backbone/layer_1/attention/bias, "
      "params/backbone/layer_1/attention/kernel, params/backbone/layer_2/** (4)\n"
      "  initialized 3: params/backbone/layer_1/mlp/bias, params/backbone/layer_1/mlp/kernel, "
      "params/heads/classifier/kernel\n"
      "  ignored 0\n"
      "  partly loaded (path by path above): params/backbone/layer_1")


def test_transfer_summary_of_nothing():
  assert format_report({"loaded": [], "initialized": [], "ignored": []}) == (
      "  loaded 0\n  initialized 0\n  ignored 0")


def test_transfer_summary_is_short_for_a_large_model():
  report = {"loaded": sorted(_layers("params/backbone", 24)),
            "initialized": ["params/heads/classifier/kernel"], "ignored": []}
  assert len(report["loaded"]) == 96 and len(format_report(report)) < 100
