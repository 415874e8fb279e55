"""Overrides on staged configs: one-line answers, and `--config.all_stages.KEY=VALUE`;
task keys that the task never reads refused before anything trains.

The real CLI entry point runs in-process with its argv; `ptft_jax.train.run` is
replaced by a recorder, so nothing trains: the tests look at the parsed config.
"""

import sys

import pytest
from absl import flags

from ptft_jax import main as cli
from ptft_jax import train

QUICKSTART = "--config=configs/quickstart.py"
STAGES = "configs/quickstart.py has stages pretrain, pretrained, scratch"


def _reset_flags():
  """Forgets the last parse, including the `--config.<key>` flags it defined."""
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)


@pytest.fixture
def cli_run(monkeypatch, capsys, tmp_path):
  """run(*args) -> (exit status, stderr, the config handed to train.run or None)."""

  def run(*args):
    seen = {}
    monkeypatch.setattr(train, "run", lambda config, workdir, **kw: seen.update(config=config))
    monkeypatch.setattr(sys, "argv", ["ptft_jax.main", *args, f"--workdir={tmp_path}"])
    _reset_flags()
    capsys.readouterr()
    try:
      cli.main()
      code = 0
    except SystemExit as e:
      code = 0 if e.code is None else e.code
    finally:
      _reset_flags()
    return code, capsys.readouterr().err.strip(), seen.get("config")

  return run


def test_top_level_key_on_staged_config_names_the_stages(cli_run):
  code, err, _ = cli_run(QUICKSTART, "--config.optim.lr=0.1")
  assert code == 2
  assert err == (f"error: {STAGES}: write --config.stages.<stage>.optim.lr "
                 "(or --config.all_stages.optim.lr=... for every stage)")


def test_misspelled_key_on_staged_config_suggests_the_spelling(cli_run):
  code, err, _ = cli_run(QUICKSTART, "--config.optim.lrr=0.1")
  assert code == 2
  assert err == (f"error: {STAGES}: write --config.stages.<stage>.optim.lr "
                 "(or --config.all_stages.optim.lr=... for every stage); "
                 "no stage has 'optim.lrr'; did you mean 'optim.lr'?")


def test_key_of_one_stage_names_that_stage(cli_run):
  code, err, _ = cli_run(QUICKSTART, "--config.task.temperature=0.2")
  assert code == 2
  assert err == (f"error: {STAGES}: write --config.stages.pretrain.task.temperature "
                 "(only stage pretrain has task.temperature)")


def test_all_stages_reaches_every_stage(cli_run):
  code, err, config = cli_run(QUICKSTART, "--config.all_stages.optim.lr=0.05",
                              "--config.all_stages.train.tensorboard=False")
  assert (code, err) == (0, "")
  for name in ("pretrain", "pretrained", "scratch"):
    assert config.stages[name].optim.lr == 0.05
    assert config.stages[name].train.tensorboard is False


def test_all_stages_then_one_stage_the_later_flag_wins(cli_run):
  code, _, config = cli_run(QUICKSTART, "--config.all_stages.optim.lr=0.05",
                            "--config.stages.scratch.optim.lr=0.2")
  assert code == 0
  assert [config.stages[s].optim.lr for s in ("pretrain", "pretrained", "scratch")] == [
      0.05, 0.05, 0.2]


def test_one_stage_override_still_works(cli_run):
  code, _, config = cli_run(QUICKSTART, "--config.stages.pretrain.optim.lr=0.3")
  assert code == 0
  assert config.stages.pretrain.optim.lr == 0.3 and config.stages.scratch.optim.lr == 1e-3


def test_all_stages_checks_types(cli_run):
  code, err, _ = cli_run(QUICKSTART, "--config.all_stages.optim.lr=abc")
  assert code == 2
  assert err == ("error: config.all_stages.optim.lr: cannot use 'abc' "
                 "(could not convert string to float: 'abc')")


def test_all_stages_suggests_the_spelling(cli_run):
  code, err, _ = cli_run(QUICKSTART, "--config.all_stages.optim.lrr=0.1")
  assert code == 2
  assert err == ("error: unknown config key 'all_stages.optim.lrr'; "
                 "did you mean 'all_stages.optim.lr'?")


def test_all_stages_key_missing_in_some_stages(cli_run):
  code, err, _ = cli_run(QUICKSTART, "--config.all_stages.task.temperature=0.2")
  assert code == 2
  assert err == ("error: --config.all_stages.task.temperature: stages pretrained, scratch "
                 "have no task.temperature; write --config.stages.pretrain.task.temperature")


def test_all_stages_on_single_stage_config(cli_run):
  code, err, _ = cli_run("--config=configs/digits.py", "--config.all_stages.optim.lr=0.1")
  assert code == 2
  assert err == ("error: --config.all_stages.optim.lr: configs/digits.py has no stages; "
                 "write --config.optim.lr")


def test_single_stage_overrides_unchanged(cli_run):
  code, _, config = cli_run("--config=configs/digits.py", "--config.optim.lr=0.1")
  assert code == 0 and config.optim.lr == 0.1
  code, err, _ = cli_run("--config=configs/digits.py", "--config.optim.lrr=0.1")
  assert (code, err) == (2, "error: unknown config key 'optim.lrr'; did you mean 'optim.lr'?")


def test_all_stages_skips_import_stages(cli_run):
  code, err, config = cli_run("--config=configs/minilm_text.py:tiny",
                              "--config.all_stages.optim.lr=0.01")
  assert (code, err) == (0, "")
  trained = [n for n in config.stage_order if "import_hf_bert" not in config.stages[n]]
  assert trained and all(config.stages[n].optim.lr == 0.01 for n in trained)


def test_task_key_the_task_does_not_read(cli_run):
  code, err, config = cli_run("--config=configs/digits.py", "--config.task.name=contrastive",
                              "--config.task.mixup_alpha=0.2")
  assert (code, config) == (2, None)
  assert err == ("error: config.task.mixup_alpha=0.2 is not read by task 'contrastive' "
                 "(it reads: temperature, augment, projection_hidden, projection_dim); remove it")


def test_task_keys_of_a_late_stage_are_checked_before_any_stage_trains(cli_run):
  code, err, config = cli_run(QUICKSTART, "--config.stages.scratch.task.name=autoencoder")
  assert (code, config) == (2, None)
  assert err == ("error: config.stages.scratch.task.head_dropout_rate=0.2 is not read by task "
                 "'autoencoder' (it reads: noise, dropout, head_hidden_sizes); remove it")
