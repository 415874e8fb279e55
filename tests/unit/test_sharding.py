"""Sharding rules, meshes (multi-slice arithmetic), the memory report and remat parity."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ptft_jax import base_config, data, models, optim, tasks
from ptft_jax.errors import ConfigError
from ptft_jax.parallel import memory, multihost, sharding
from ptft_jax.train import steps


def _mlp_setup():
  """A digits MLP, its task, optimizer, initial state (on one device) and three batches."""
  config = base_config()
  config.model.hidden_sizes = (32,)  # (64,) hides the XLA bug that BATCH_AXES avoids
  config.optim.name, config.optim.lr, config.optim.warmup_steps = "sgd", 0.1, 0  # big steps
  task, heads = tasks.build_task(config, data.dataset_info("digits"))
  model = models.build_model(config.model, heads)
  it = data.train_iterator("digits", global_batch_size=32, seed=0)
  batches = [{k: v for k, v in next(it).items() if k != "valid"} for _ in range(3)]
  params, model_state = steps.init_variables(model, batches[0], jax.random.PRNGKey(0))
  tx, _ = optim.make_optimizer(params, config.optim, total_steps=10)
  state = {"step": jnp.int32(0), "params": params, "model_state": model_state,
           "opt_state": tx.init(params), "rng": jax.random.PRNGKey(1)}
  return config, task, model, tx, state, batches


def _train(mesh, config, task, model, tx, state, batches):
  """Three steps on `mesh` with the default rules; returns (losses + grad norms, state)."""
  layout = sharding.Layout.from_config(config, mesh)
  state = layout.put(jax.device_get(state))  # fresh buffers: the step donates them
  step = jax.jit(steps.make_train_step(model, task, tx), donate_argnums=0,
                 out_shardings=(layout.state_shardings(state), None))
  losses = []
  for b in batches:
    state, m = step(state, sharding.host_to_global(b, mesh))
    losses += [float(m["loss"]), float(m["grad_norm"])]
  return losses, state


def _momentum(opt_state):
  found = [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))
      if isinstance(s, optax.TraceState)]
  return found[0].trace


def test_same_training_on_1_device_dp8_fsdp8_data4_tensor2_and_2x2x2():
  setup = _mlp_setup()
  devices = jax.devices()
  meshes = {
      "1 device": sharding.make_mesh({"data": -1}, devices[:1]),
      "data=8": sharding.make_mesh({"data": -1}, devices),
      "fsdp=8": sharding.make_mesh({"data": 1, "fsdp": -1}, devices),
      "data=4 x tensor=2": sharding.make_mesh({"data": 4, "tensor": 2}, devices),
      # All three axes > 1: where XLA got the gradients wrong with a (data, fsdp) batch.
      "2 x 2 x 2": sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices),
  }
  results = {name: _train(mesh, *setup) for name, mesh in meshes.items()}
  reference, ref_state = results["1 device"]
  assert reference[4] < reference[0] - 0.03  # it trains (losses, grad norms interleaved)
  for name, (values, state) in results.items():
    np.testing.assert_allclose(values, reference, rtol=2e-5, err_msg=name)
    for got, want in zip(jax.tree_util.tree_leaves(state["params"]),
                         jax.tree_util.tree_leaves(ref_state["params"]), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)

  # After training, params and momenta still lie as the rules say.
  expected = {  # path: (fsdp=8 spec, data=4 x tensor=2 spec)
      ("backbone", "layer_0", "kernel"): (P("fsdp", "tensor"), P("fsdp", "tensor")),
      ("heads", "classifier", "logits", "kernel"): (P("fsdp", "tensor"), P("fsdp", "tensor")),
      ("backbone", "layer_0", "bias"): (P(), P()),
  }
  for (path, specs) in expected.items():
    for name, spec in zip(("fsdp=8", "data=4 x tensor=2"), specs, strict=True):
      state = results[name][1]
      leaf, mu = state["params"], _momentum(state["opt_state"])
      for k in path:
        leaf, mu = leaf[k], mu[k]
      assert leaf.sharding.spec == spec and mu.sharding.spec == spec, (name, path)
  kernel = results["fsdp=8"][1]["params"]["backbone"]["layer_0"]["kernel"]
  assert kernel.shape == (64, 32) and kernel.sharding.shard_shape(kernel.shape) == (8, 32)
  logits = results["data=4 x tensor=2"][1]["params"]["heads"]["classifier"]["logits"]["kernel"]
  assert logits.sharding.shard_shape(logits.shape) == (32, 5)  # 10 classes over tensor=2


def _tiny_bert(**kw):
  fields = dict(vocab_size=51, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                max_position_embeddings=16) | kw
  return models.bert(**fields)


def _abstract_bert_params():
  batch = {"input_ids": jnp.zeros((2, 8), jnp.int32)}
  return jax.eval_shape(lambda r: _tiny_bert().init(r, batch, train=False)["params"],
                        jax.random.PRNGKey(0))


def test_transformer_rules_fallback_overrides_and_optimizer_state():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices())
  params = _abstract_bert_params()
  layout = sharding.Layout.from_config(base_config(), mesh)
  specs = jax.tree_util.tree_map(lambda s: s.spec, layout.shardings(params))
  layer = specs["layer_0"]
  assert layer["attention"]["query"]["kernel"] == P("fsdp", "tensor")
  assert layer["attention"]["query"]["bias"] == P("tensor")
  assert layer["attention"]["out"]["kernel"] == P("tensor", "fsdp")
  assert layer["mlp"]["intermediate"]["kernel"] == P("fsdp", "tensor")
  assert layer["mlp"]["output"]["kernel"] == P("tensor", "fsdp")
  assert layer["attention_norm"]["scale"] == P()
  assert specs["embeddings"]["position_embeddings"]["embedding"] == P(None, "fsdp")
  # vocab 51 is not divisible by tensor=2: that dimension stays whole, and the run says so.
  assert specs["embeddings"]["word_embeddings"]["embedding"] == P(None, "fsdp")
  assert layout.summary() == (
      "sharding: 1 dimension(s) kept whole: embeddings/word_embeddings/embedding dim 0 "
      "(vocab, size 51) not divisible by tensor=2")

  # Optimizer state (Adam mu / nu under each param's own path) follows the params.
  opt = jax.eval_shape(optax.adamw(1e-3).init, params)
  opt_specs = jax.tree_util.tree_map(lambda s: s.spec, layout.shardings(opt))
  assert opt_specs[0].mu == specs and opt_specs[0].nu == specs and opt_specs[0].count == P()

  # Config overrides: a rule and an extra path rule (tried before the defaults).
  c = base_config()
  c.sharding.rules.embed = ""
  c.sharding.param_axes = [(r".*/output/kernel", ("mlp", "heads"))]
  specs = jax.tree_util.tree_map(
      lambda s: s.spec, sharding.Layout.from_config(c, mesh).shardings(params))
  assert specs["layer_0"]["attention"]["query"]["kernel"] == P(None, "tensor")
  assert specs["layer_0"]["mlp"]["output"]["kernel"] == P("tensor")  # tensor used once only

  c.sharding.rules.mlp = "model"
  with pytest.raises(ConfigError, match=r"config.sharding.rules.mlp='model': 'model' is not"):
    sharding.Layout.from_config(c, mesh)
  c = base_config()
  c.sharding.param_axes = [(r".*/kernel", ("embed", "experts"))]
  with pytest.raises(ConfigError, match=r"param_axes\[0\]: logical axis 'experts' has no"):
    sharding.Layout.from_config(c, mesh)


@dataclasses.dataclass(frozen=True)
class _FakeDevice:
  id: int
  slice_index: int
  process_index: int = 0
  platform: str = "cpu"
  device_kind: str = "fake"


def test_multi_slice_mesh_shapes_with_fake_slices():
  # 4 slices of 8: data parallel across slices by default; fsdp x tensor inside a slice.
  cfg = {"data": 1, "fsdp": -1, "tensor": 2}
  assert sharding.hybrid_mesh_shape(cfg, 32, 4) == ((1, 4, 2), (4, 1, 1))
  assert sharding.hybrid_mesh_shape({**cfg, "dcn_data": 2, "dcn_fsdp": 2}, 32, 4) == (
      (1, 4, 2), (2, 2, 1))
  assert sharding.hybrid_mesh_shape({"data": -1}, 256, 1) == ((256, 1, 1), (1, 1, 1))
  devices = [_FakeDevice(i, i // 8) for i in range(32)]
  assert sharding.num_slices(devices) == 4
  array = sharding.device_array(cfg, devices)
  assert array.shape == (4, 4, 2)  # data = 1 (in slice) x 4 (slices)
  for s in range(4):  # each slice fills one index of the data axis
    assert {d.slice_index for d in array[s].ravel()} == {s}
  with pytest.raises(ConfigError, match="needs 2 slices but 1 are available"):
    sharding.make_mesh({"data": -1, "dcn_data": 2})
  with pytest.raises(ConfigError, match="at most one of dcn_data / dcn_fsdp / dcn_tensor"):
    sharding.hybrid_mesh_shape({"data": -1, "dcn_fsdp": -1}, 32, 4)
  with pytest.raises(ConfigError, match="does not divide 8 devices"):
    sharding.make_mesh({"data": 3, "fsdp": -1})


def test_memory_report_and_activation_formula():
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1}, jax.devices())
  layout = sharding.Layout(mesh)
  params = {"backbone": {"layer_0": {"kernel": jax.ShapeDtypeStruct((64, 32), jnp.float32),
                                     "bias": jax.ShapeDtypeStruct((32,), jnp.float32)}}}
  state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "model_state": {},
           "opt_state": jax.eval_shape(optax.adam(1e-3).init, params),
           "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
  report = memory.report(state, layout).splitlines()
  assert report[0].startswith("parameters: 2,080 (8.1 KiB); optimizer state 16.3 KiB")
  # kernel split 8 ways (1 KiB), bias whole (128 B): params 1152 B, Adam 2 x 1152 + count 4 B
  assert report[1] == ("per device: params 1.1 KiB + optimizer state 2.3 KiB + gradients "
                       "1.1 KiB = 4.5 KiB")
  frozen = {"backbone": {"layer_0": {"kernel": False, "bias": True}}}
  assert "gradients 128 B" in memory.report(state, layout, frozen)

  # The formula reduces to Korthikanti et al.'s s*b*h*(34 + 5*a*s/h) for bf16, I = 4h, t = 1.
  s, b, h, a, n = 512, 4, 1024, 16, 24
  est = memory.transformer_activation_bytes(batch=b, seq_len=s, hidden=h, intermediate=4 * h,
                                            heads=a, layers=n, dtype_bytes=2)
  assert est == n * s * b * h * (34 + 5 * a * s / h)
  full = memory.transformer_activation_bytes(batch=b, seq_len=s, hidden=h, intermediate=4 * h,
                                             heads=a, layers=n, dtype_bytes=2, remat="full")
  assert full == n * 2 * s * b * h + est / n


def test_remat_gives_the_same_loss_and_gradients():
  batch = {"input_ids": jax.random.randint(jax.random.PRNGKey(0), (2, 8), 0, 51)}
  weights = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 16))
  shapes = jax.eval_shape(  # the same param tree for every remat policy
      lambda r: _tiny_bert(remat="full").init(r, batch, train=False)["params"],
      jax.random.PRNGKey(2))
  assert shapes == _abstract_bert_params()
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)

  @jax.jit
  def loss_and_grads(params):  # one compile for the three policies
    out = {}
    for remat in ("none", "full", "dots_saveable"):
      model = _tiny_bert(remat=remat)
      loss = lambda p, m=model: jnp.sum(weights * m.apply(  # dropout on: same masks needed
          {"params": p}, batch, train=True, rngs={"dropout": jax.random.PRNGKey(3)})["sequence"])
      out[remat] = jax.value_and_grad(loss)(params)
    return out

  results = loss_and_grads(params)
  ref_loss, ref_grads = results["none"]
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(ref_grads))
  for remat in ("full", "dots_saveable"):
    loss, grads = results[remat]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads),
                    strict=True):
      np.testing.assert_allclose(g, r, atol=1e-5 * scale)
  with pytest.raises(ConfigError, match="remat 'some' is not one of"):
    _tiny_bert(remat="some")


def test_multihost_settings_from_flags_and_environment(monkeypatch):
  for k in ("PTFT_COORDINATOR", "PTFT_NUM_PROCESSES", "PTFT_PROCESS_ID", "PTFT_MULTIHOST",
            "PTFT_LOCAL_DEVICE_IDS", "SLURM_NTASKS"):
    monkeypatch.delenv(k, raising=False)
  assert multihost.settings() is None
  assert multihost.settings(multihost=True) == {}
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert multihost.settings() == {}  # several SLURM tasks always join
  monkeypatch.setenv("PTFT_LOCAL_DEVICE_IDS", "0,1,2,3")  # one process per node: all its GPUs
  assert multihost.settings() == {"local_device_ids": [0, 1, 2, 3]}
  monkeypatch.delenv("PTFT_LOCAL_DEVICE_IDS")
  monkeypatch.setenv("PTFT_COORDINATOR", "localhost:1234")
  monkeypatch.setenv("PTFT_NUM_PROCESSES", "2")
  monkeypatch.setenv("PTFT_PROCESS_ID", "1")
  assert multihost.settings() == {
      "coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}
  assert multihost.settings(process_id=0)["process_id"] == 0  # a flag wins over the env
  with pytest.raises(ConfigError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
    multihost.settings(process_id=2)
  monkeypatch.delenv("PTFT_PROCESS_ID")
  with pytest.raises(ConfigError, match="also needs --num_processes and --process_id"):
    multihost.settings()
