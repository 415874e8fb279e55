"""The train loop wastes nothing per step: one compilation, no host reads between logs, donation.

Host reads are counted at `jax.Array._value`, the property every device->host
conversion goes through (np.asarray, float, int, jax.device_get); the CPU backend
ignores `jax.transfer_guard`, so the guard cannot be used for this.
"""


import jax
import pytest
from jax._src import array as jax_array

from ptft_jax import base_config, train
from tests.helpers import CompileLog


@pytest.fixture()
def spied_run(tmp_path, monkeypatch):
  """Runs an 8-step digits loop (log / eval / save every 4) under three spies."""
  reads = [0]
  real_value = jax_array.ArrayImpl._value

  def counted(self):
    reads[0] += 1
    return real_value.fget(self)

  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(counted))

  donated = []  # per step: fraction of the input state's bytes not donated
  reads_after_step = []  # host reads between train steps k and k + 1
  real_jit = jax.jit

  def jit(fun, *args, **kwargs):
    compiled = real_jit(fun, *args, **kwargs)
    if getattr(fun, "__name__", "") != "train_step":
      return compiled

    def call(state, batch):
      if donated:  # the reads before the first step are the setup's
        reads_after_step.append(reads[0])
      reads[0] = 0
      out = compiled(state, batch)
      leaves = jax.tree_util.tree_leaves(state)
      kept = sum(x.nbytes for x in leaves if not x.is_deleted())
      donated.append(kept / sum(x.nbytes for x in leaves))
      return out
    return call

  monkeypatch.setattr(jax, "jit", jit)

  c = base_config()
  c.model.hidden_sizes = (32,)
  c.data.batch_size = 32
  c.data.eval_batch_size = 64
  c.optim.warmup_steps = 2
  c.train.steps = 8
  c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 4
  c.train.tensorboard = False
  c.eval_splits = ("validation",)
  with CompileLog() as compiles:
    train.train_and_evaluate(c, str(tmp_path))
  return compiles.names, reads_after_step, donated


def test_loop_compiles_once_reads_only_at_logs_and_donates(spied_run):
  compiles, reads_after_step, donated = spied_run
  # One train step program for all 8 steps (logs, evals and saves in between);
  # eval_step once for 2 periodic + 1 final validation passes.
  assert compiles.count("train_step") == 1
  assert compiles.count("eval_step") == 1
  # reads_after_step[k - 1]: the host reads between steps k and k + 1.
  assert len(reads_after_step) == 7
  quiet = [reads_after_step[k - 1] for k in (1, 2, 3, 5, 6, 7)]
  assert quiet == [0] * 6, f"host reads after steps 1-3, 5-7: {quiet}"
  assert reads_after_step[3] > 0  # step 4 logs, evaluates and saves: reads are expected there
  # Each step's input state is donated (its buffers become the output's). The step
  # right after a save keeps a few small leaves (biases, counters, the rng) that
  # the asynchronous save still reads; every large buffer is reused.
  assert [f for k, f in enumerate(donated, 1) if k != 5] == [0.0] * 7
  assert donated[4] < 0.01
