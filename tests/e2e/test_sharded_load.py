"""Every load path creates each leaf in its fsdp=8 sharding: device 0 holds ~1/8 of the model.

The bound is 1/8 of the model's bytes + 10%: only the 1-D leaves (biases, norm scales)
replicate under the default rules, and in these models they are under 1% of the bytes, so
device 0 holds at most 1/8 + 7/8 x 1% of the model. Values must equal the unsharded load
exactly (a load moves bytes, it computes nothing).
"""

import jax
import ml_collections
import numpy as np
import pytest

import ptft_jax as pj
from ptft_jax import base_config, train
from ptft_jax.convert import hf_bert
from ptft_jax.convert import workdir as convert_workdir
from ptft_jax.inference import evaluate, predictor
from ptft_jax.models.transformer import BertEncoder, TransformerConfig
from ptft_jax.parallel import sharding
from ptft_jax.train import checkpoint, early_stopping, loop, placement
from tests.helpers import flat

BERT = TransformerConfig(vocab_size=1024, hidden_size=128, num_layers=2, num_heads=4,
                         intermediate_size=512, max_position_embeddings=64, pooler=True)


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh({"fsdp": 8})


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
  """(host backbone params with random values, HF directory, imported pretrained workdir)."""
  ids = np.zeros((1, 8), np.int32)
  params = BertEncoder(BERT).init(jax.random.key(0), {"input_ids": ids}, train=False)["params"]
  rng = np.random.default_rng(0)  # every leaf distinct, so a misplaced slice shows
  params = jax.tree_util.tree_map(
      lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
  hf_dir = str(tmp_path_factory.mktemp("hf"))
  hf_bert.export_hf_bert(BERT, params, hf_dir)
  imported = str(tmp_path_factory.mktemp("imported"))
  convert_workdir.write_pretrained_workdir(BERT, {"backbone": params, "heads": {}}, imported)
  return params, hf_dir, imported


def _model_bytes(tree) -> int:
  return sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree))


def _check_sharded(tree, reference):
  """Equal to `reference` leaf by leaf; device 0 holds <= 1/8 of the bytes + 10%."""
  got, want = flat(tree), flat(reference)
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)
  held, total = placement.bytes_on(tree, jax.devices()[0]), _model_bytes(reference)
  assert held <= 1.1 * total / 8, (held, total)
  return held, total


def test_hf_import_reads_slices_into_their_shardings(bert, mesh):
  params, hf_dir, _ = bert
  layout = placement.layout(mesh)
  _, loaded = hf_bert.load_hf_bert(hf_dir, placement=placement.placer(layout))
  assert loaded["layer_0"]["attention"]["query"]["kernel"].sharding.spec[0] == "fsdp"
  _check_sharded(loaded, params)
  _, host = hf_bert.load_hf_bert(hf_dir)  # the unsharded (host) load: the same values
  _check_sharded(loaded, host)


def test_import_hf_bert_writes_what_it_read(bert, mesh, tmp_path):
  params, hf_dir, _ = bert
  convert_workdir.import_hf_bert(hf_dir, str(tmp_path / "w"), mesh=mesh)
  loaded, _ = checkpoint.load_params(str(tmp_path / "w"), sharding=placement.layout(mesh))
  _check_sharded(loaded["params"]["backbone"], params)


@pytest.mark.parametrize("source", ["hf", "imported"])
def test_public_load_params(bert, mesh, source):
  params, hf_dir, imported = bert
  path = hf_dir if source == "hf" else imported
  config, loaded = pj.load_params(path, mesh=mesh)
  assert config.hidden_size == BERT.hidden_size
  _check_sharded(loaded["backbone"], params)
  _, unsharded = pj.load_params(path)
  _check_sharded(loaded, unsharded)


def test_transfer_from_a_run(bert, mesh, tmp_path):
  params, _, imported = bert
  layout = placement.layout(mesh)
  zeros = jax.tree_util.tree_map(np.zeros_like, params)
  target = layout.init(lambda: {"params": {"backbone": zeros}, "model_state": {}})
  config = ml_collections.ConfigDict({"init": {
      "pretrained_workdir": imported, "load": ("backbone/.*",), "skip": ("heads/.*",)}})
  new_params, _ = loop._transfer(config, str(tmp_path), target["params"], {}, layout)
  _check_sharded(new_params["backbone"], params)


def test_best_restore(bert, mesh, tmp_path):
  params, _, _ = bert
  layout = placement.layout(mesh)
  state = {"params": jax.device_put({"backbone": params},
                                    layout.shardings({"backbone": params})), "model_state": {}}
  keeper = early_stopping.BestKeeper(early_stopping.EarlyStopping("accuracy"), str(tmp_path),
                                     start_step=0, keep_best=True)
  keeper.record_and_save_best(3, {"accuracy": 0.5}, lambda: state)
  best, step = keeper.best_state(layout)
  keeper.close()
  assert step == 3
  _check_sharded(best["params"]["backbone"], params)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
  """A digits MLP trained on fsdp=8 with early stopping (its final eval restores the best)."""
  workdir = str(tmp_path_factory.mktemp("fsdp_run"))
  c = base_config()
  c.mesh.data, c.mesh.fsdp = 1, 8
  c.model.hidden_sizes = (512, 512)  # kernels dominate: 1-D leaves are 0.3% of the bytes
  c.data.batch_size, c.data.eval_batch_size = 32, 64
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 4, 2, 2, 2
  c.train.tensorboard = False
  c.train.early_stopping.metric = "accuracy"
  c.eval_splits = ("test",)
  result = train.train_and_evaluate(c, workdir)
  return workdir, result


def test_predictor_and_eval_on_fsdp(fsdp_run, mesh):
  workdir, result = fsdp_run
  sharded = predictor.load_predictor(workdir, mesh=mesh, batch_size=64)
  replicated = predictor.load_predictor(workdir, batch_size=64)
  _check_sharded(sharded.run.variables, replicated.run.variables)
  images = np.random.default_rng(0).uniform(size=(100, 8, 8, 1)).astype(np.float32)
  got = sharded.predict(images).probabilities
  np.testing.assert_allclose(got, replicated.predict(images).probabilities, atol=1e-5)
  # --mode=eval loads into the run's own fsdp=8 shardings; the best checkpoint scores what
  # the run's final evaluation (restored from the best checkpoint, sharded) reported.
  metrics, _ = evaluate.evaluate_checkpoint(workdir, "test", "best")
  assert metrics["accuracy"] == pytest.approx(result["test"]["accuracy"], abs=1e-6)
