r"""Benchmark: train-step throughput, share of the measured matmul peak, input and checkpoint cost.

  python -m ptft_jax.bench                                  # every workload, ~7 min on 2 cores
  python -m ptft_jax.bench --workload bert_mlm bert_cls --peer --out bench.jsonl  # + PyTorch

Prints one JSON object per line: first `peak` (jitted 2048 x 2048 matmuls,
float32 and bfloat16), then one per workload with at least

  workload, step_s (median of the timed steps), examples_per_s, tokens_per_s,
  model_flops_per_step (ptft_jax/bench/flops.py), flops_per_s, peak_share
  (flops_per_s / the float32 matmul peak measured in the same process, just
  before and after the timed steps), peak_memory_bytes (+ memory_source)

(null where a key does not apply), and last a `summary` with the targets of
issue 9 and whether this run met them. `--peer` also runs the PyTorch peer
(tools/bench_torch_peer.py) with the Python of `--peer-python` (or
`$PTFT_TORCH_PYTHON`; default `.venv-torch/bin/python` in the repository, which
`bash launch/setup_torch_peer.sh` creates; torch is not a ptft_jax requirement).

Each workload runs in its own Python process (`--in-process` to disable), so
`peak_memory_bytes` is that process's resident-set high-water mark
(`resource.getrusage`, memory_source "rss_high_water"; it includes the JAX
runtime, ~0.4 GB) on CPU, or the device's `peak_bytes_in_use` where
`memory_stats()` reports one.

Workloads (model shapes in `TEXT_SHAPE`, the MiniLM-L6 shape):
  bert_mlm          BERT masked-LM pretraining step (tasks_text.MaskedLM: masking on
                    device, 20 predictions per row), AdamW + clipping, dropout 0.1
  bert_mlm_bf16     the same with bfloat16 compute (float32 master weights)
  bert_cls          sequence classification fine-tuning (pooler + classifier)
  bert_cls_frozen   the same with `backbone/.*` frozen by a parameter group (head only)
  gpt_lm            GPT causal-LM step, same layer shape, loss at every position
  resnet            ResNet-18 (32 x 32 stem) classification step, batch 64
  lstm              2-layer LSTM (hidden 512) text classification step
  input_digits      the digits train iterator alone (step_s: mean time per batch of 64)
                    vs the digits CNN step it feeds (`headroom` = step / batch time)
  input_text        the sentence-pair MLM text pipeline alone (MiniLM vocabulary,
                    shipped corpus; step_s: mean time per batch of 32 x 128), compared
                    in the summary with the bert_mlm step
  checkpoint        async Orbax save of the bert_mlm train state: time the loop is
                    blocked, total time, restore time
  finetune_text_e2e the whole fine-tuning command on ragged text (configs/ragged_text.py:
                    imported all-MiniLM-L6-v2, reviews of 8-290 tokens, 40 steps of 16,
                    test evaluation): wall time of `python -m ptft_jax.main` with
                    length buckets vs every row padded to 256, test accuracy of both,
                    real / padded tokens; with --peer also HF `Trainer` +
                    `DataCollatorWithPadding` on the same data and steps
                    (tools/bench_trainer_peer.py), process wall time too.
                    Not in the default run (~5 min): `--workload finetune_text_e2e`
  gpu_bert_base_mlm BERT-base masked LM (sequence 512, batch 64, 76 predictions per row)
  gpu_decoder_1b    the ~1B decoder of configs/decoder_1b.py (sequence 2048, batch 8):
                    both bfloat16 with float32 master weights, no attention dropout (cuDNN
                    attention); `mfu` against the GPU's datasheet bfloat16 peak, `peak_share`
                    against a bfloat16 8192^3 matmul measured in the same process. On a
                    GPU only (elsewhere the record is an error; --tiny runs toy shapes
                    anywhere); not in the default run: launch/gpu_bench.sh
  compile_scan      compile time (jit lower + XLA compile) of the BERT MLM train step at 4
                    and 48 layers (hidden 128), looped vs `model.scan_layers=True`;
                    not in the default run (~2 min on 2 cores): `--workload compile_scan`
"""

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

KEYS = ("workload", "step_s", "examples_per_s", "tokens_per_s", "model_flops_per_step",
        "flops_per_s", "peak_share", "peak_memory_bytes")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_SCRIPT = os.path.join(REPO, "tools", "bench_torch_peer.py")
TRAINER_PEER_SCRIPT = os.path.join(REPO, "tools", "bench_trainer_peer.py")
# Made by launch/setup_torch_peer.sh, inside the repository (git-ignored).
DEFAULT_PEER_PYTHON = os.path.join(REPO, ".venv-torch", "bin", "python")


@dataclasses.dataclass(frozen=True)
class Options:
  """How long to measure. `tiny` swaps every model for a toy shape (tests)."""

  steps: int = 5
  warmup: int = 2
  tiny: bool = False


def _record(workload: str, **fields) -> dict:
  return {k: None for k in KEYS} | {"workload": workload} | fields


# --- measuring ----------------------------------------------------------------------------


def matmul_peak(dtype: str = "float32", n: int = 2048, reps: int = 5) -> float:
  """FLOP/s of a jitted `n x n @ n x n` matmul in `dtype` (median of `reps` timings).

  Accumulates in float32 (for bfloat16 that is XLA:CPU's fast path, the one
  mixed-precision training takes: see models/matmul.py).
  """
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / statistics.median(times)


def peak_memory() -> tuple[int, str]:
  """(bytes, source): the device's peak allocation if it reports one, else this process's RSS."""
  import jax

  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device_peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_high_water"


def time_steps(step: Callable, state, batch, opts: Options):
  """Runs `warmup` then `steps` synchronized train steps; returns (state, seconds per step)."""
  import jax

  times = []
  for i in range(opts.warmup + opts.steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    if i >= opts.warmup:
      times.append(time.perf_counter() - t0)
  return state, times


def _throughput(workload, times, *, examples, tokens, flops, peak, first_step_s,
                **extra) -> dict:
  step_s = statistics.median(times)
  memory, source = peak_memory()
  # compile_s: the first step's wall time minus a steady step (tracing + XLA compile).
  return _record(
      workload, step_s=step_s, examples_per_s=examples / step_s,
      tokens_per_s=tokens / step_s if tokens else None, model_flops_per_step=flops,
      flops_per_s=flops / step_s, peak_share=flops / step_s / peak,
      peak_memory_bytes=memory, memory_source=source, peak_flops_per_s=peak,
      step_s_min=min(times), step_s_max=max(times), steps=len(times),
      first_step_s=first_step_s, compile_s=first_step_s - step_s, **extra)


# --- train-step workloads -------------------------------------------------------------------


def text_shape(tiny: bool):
  """The MiniLM-L6 shape at batch 32 x 128 with 20 predictions (or a toy one)."""
  from ptft_jax.bench import flops

  if tiny:
    return flops.TransformerShape(num_layers=2, hidden_size=16, num_heads=4,
                                  intermediate_size=32, vocab_size=101, batch_size=4,
                                  seq_len=16, predictions=3)
  return flops.TransformerShape()


# MiniLM's (BERT uncased) special ids: [PAD] [UNK] [CLS] [SEP] [MASK].
_SPECIAL = (0, 100, 101, 102, 103)


def _token_batch(shape, seed: int = 0) -> dict:
  """[CLS] random words [SEP], no padding: [batch, seq] int32 columns."""
  import numpy as np

  rng = np.random.default_rng(seed)
  low = max(_SPECIAL) + 1 if shape.vocab_size > 2 * max(_SPECIAL) else len(_SPECIAL)
  ids = rng.integers(low, shape.vocab_size, (shape.batch_size, shape.seq_len)).astype(np.int32)
  ids[:, 0], ids[:, -1] = _special_ids(shape)[2], _special_ids(shape)[3]
  ones = np.ones_like(ids)
  return {"input_ids": ids, "attention_mask": ones, "token_type_ids": 0 * ones}


def _special_ids(shape) -> tuple[int, ...]:
  return _SPECIAL if shape.vocab_size > 2 * max(_SPECIAL) else tuple(range(len(_SPECIAL)))


def text_model_config(shape, *, family: str = "bert", dtype: str = "float32", **overrides):
  """`config.model` for a BERT (or GPT) backbone of `shape`; dropout 0.1 as in MiniLM."""
  import ml_collections

  fields = dict(
      name=family, vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
      num_layers=shape.num_layers, num_heads=shape.num_heads,
      intermediate_size=shape.intermediate_size, max_position_embeddings=max(512, shape.seq_len),
      dropout_rate=0.1, attention_dropout_rate=0.1, dtype=dtype)
  if family == "gpt":
    fields["layer_norm_eps"] = 1e-5
  return ml_collections.ConfigDict(fields | overrides)


def build_text_step(kind: str, shape, *, dtype: str = "float32", frozen: bool = False,
                    model_overrides: dict | None = None):
  """(jitted train step, state, device batch) for "mlm", "cls" or "lm" on `shape`.

  Uses the project's pieces: `models.build_model`, the text heads, the text
  tasks (`tasks_text`), `optim.make_optimizer` (AdamW, clipping, weight-decay
  mask; `backbone/.*` frozen when `frozen`) and `steps.make_train_step`. A
  `dtype` below float32 is what `config.train.compute_dtype` does (params cast
  inside the loss, float32 master weights and optimizer state), with the model
  and heads' `dtype` set to it as well.
  """
  import jax
  import jax.numpy as jnp

  from ptft_jax import optim
  from ptft_jax.config import defaults
  from ptft_jax.models import build_model
  from ptft_jax.models import heads as heads_text
  from ptft_jax.tasks import text as tasks_text
  from ptft_jax.train import steps

  batch = _token_batch(shape)
  special = _special_ids(shape)
  if kind == "mlm":
    task = tasks_text.MaskedLM(vocab_size=shape.vocab_size, mask_id=special[4],
                               special_ids=special, max_predictions=shape.predictions)
    heads = {"mlm": heads_text.MaskedLMHead(dtype=dtype)}
  elif kind == "cls":
    task = tasks_text.TextClassification(num_classes=2, vocab_size=shape.vocab_size)
    heads = {"classifier": heads_text.SequenceClassificationHead(2, dtype=dtype)}
    batch["label"] = (batch["input_ids"][:, 1] % 2).astype(batch["input_ids"].dtype)
  elif kind == "lm":
    task = tasks_text.CausalLM(vocab_size=shape.vocab_size)
    heads = {"lm": heads_text.CausalLMHead(dtype=dtype)}
    del batch["token_type_ids"]
  else:
    raise ValueError(f"unknown text step kind {kind!r}")
  family = "gpt" if kind == "lm" else "bert"
  model = build_model(
      text_model_config(shape, family=family, dtype=dtype, **(model_overrides or {})), heads)
  config = defaults.base_config()
  if frozen:
    config.optim.groups = [("backbone/.*", {"frozen": True})]
  compute = None if dtype == "float32" else jnp.dtype(dtype)  # config.train.compute_dtype
  return _compiled_step(model, task, config.optim, batch, optim, steps, jax, jnp, compute)


def _compiled_step(model, task, optim_config, batch, optim, steps, jax, jnp, compute_dtype=None):
  device_batch = jax.device_put(batch)
  example = task.inputs(device_batch, jax.random.PRNGKey(0), False)
  params, model_state = jax.jit(lambda r: steps.init_variables(model, example, r))(
      jax.random.PRNGKey(0))
  tx, groups = optim.make_optimizer(params, optim_config, total_steps=1000)
  trainable = optim.trainable_mask(params, groups)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
           "opt_state": jax.jit(tx.init)(params), "rng": jax.random.PRNGKey(1)}
  step = jax.jit(steps.make_train_step(model, task, tx, trainable=trainable,
                                       compute_dtype=compute_dtype), donate_argnums=(0,))
  return step, state, device_batch


def _run_steps(workload: str, step, state, batch, opts: Options, *, examples: int,
               tokens: int | None, flops: int, peak_dtype: str = "float32", peak_n: int = 2048,
               **extra) -> dict:
  import jax

  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - t0
  n = 256 if opts.tiny else peak_n
  before = matmul_peak(peak_dtype, n)
  state, times = time_steps(step, state, batch, opts)
  after = matmul_peak(peak_dtype, n)
  return _throughput(workload, times, examples=examples, tokens=tokens, flops=flops,
                     peak=(before + after) / 2, first_step_s=first_step_s,
                     peak_dtype=peak_dtype, peak_matmul_size=n, **extra)


def _text_workload(name: str, kind: str, *, dtype: str = "float32", frozen: bool = False):
  def run(opts: Options) -> dict:
    from ptft_jax.bench import flops

    shape = text_shape(opts.tiny)
    step, state, batch = build_text_step(kind, shape, dtype=dtype, frozen=frozen)
    head = {"mlm": "mlm", "cls": "classifier", "lm": "lm"}[kind]
    model_flops = flops.transformer_train_flops(shape, head, frozen_backbone=frozen)
    return _run_steps(name, step, state, batch, opts, examples=shape.batch_size,
                      tokens=shape.tokens, flops=model_flops, dtype=dtype,
                      batch_size=shape.batch_size, seq_len=shape.seq_len)
  return run


# Dense bfloat16 tensor-core peaks (vendor datasheets, FLOP/s, no sparsity) for the MFU of
# the GPU workloads, by a substring of `jax.devices()[0].device_kind`. The H100 figure is
# the SXM part's; the PCIe card's is lower (756 TFLOP/s).
BF16_DATASHEET_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12}
# (head, shape, model overrides) of the GPU workloads: BERT-base at sequence 512 (76
# predictions per row, as in BERT's pretraining data) and the ~1B decoder of
# configs/decoder_1b.py at sequence 2048, both in bfloat16 with float32 master weights.
# No attention dropout, so that "auto" attention is cuDNN's fused kernel; the decoder
# keeps every activation (remat "none": ~50 GB in all at batch 8, memory.py) and scans its
# layers.
GPU_WORKLOADS = {
    "gpu_bert_base_mlm": ("mlm", dict(
        num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072,
        vocab_size=30522, batch_size=64, seq_len=512, predictions=76),
        dict(attention_dropout_rate=0.0)),
    "gpu_decoder_1b": ("lm", dict(
        num_layers=18, hidden_size=2048, num_heads=16, intermediate_size=8192,
        vocab_size=32000, batch_size=8, seq_len=2048),
        dict(dropout_rate=0.0, attention_dropout_rate=0.0, remat="none", scan_layers=True)),
}


def datasheet_bf16_peak(device_kind: str) -> float | None:
  """The dense bfloat16 peak of a known GPU (FLOP/s), else None."""
  return next((v for k, v in BF16_DATASHEET_PEAK.items() if k in device_kind), None)


def _gpu_workload(name: str):
  """A GPU workload of GPU_WORKLOADS: step time, MFU against the datasheet peak and against
  a bfloat16 8192^3 matmul measured in the same process. On a CPU it runs only with
  --tiny (toy shapes, the same code path); otherwise its record says it needs a GPU."""
  def run(opts: Options) -> dict:
    import jax

    from ptft_jax.bench import flops
    from ptft_jax.parallel import memory

    if not opts.tiny and jax.default_backend() != "gpu":
      return _record(name, error=f"needs a GPU (jax.default_backend() is "
                                 f"{jax.default_backend()!r}); --tiny runs toy shapes here")
    kind, sizes, overrides = GPU_WORKLOADS[name]
    shape = text_shape(True) if opts.tiny else flops.TransformerShape(**sizes)
    step, state, batch = build_text_step(kind, shape, dtype="bfloat16",
                                         model_overrides=overrides)
    model_flops = flops.transformer_train_flops(shape, kind)
    device_kind = jax.devices()[0].device_kind
    record = _run_steps(name, step, state, batch, opts, examples=shape.batch_size,
                        tokens=shape.tokens, flops=model_flops, peak_dtype="bfloat16",
                        peak_n=8192, dtype="bfloat16", batch_size=shape.batch_size,
                        seq_len=shape.seq_len, device_kind=device_kind, jax=jax.__version__,
                        parameters=memory.tree_size(state["params"]))
    datasheet = datasheet_bf16_peak(device_kind)
    record["datasheet_peak_flops_per_s"] = datasheet
    record["mfu"] = record["flops_per_s"] / datasheet if datasheet else None
    return record
  return run


def _forward_flops(model, batch) -> int:
  import jax

  from ptft_jax.bench import flops
  from ptft_jax.train import steps

  params, model_state = jax.eval_shape(
      lambda: steps.init_variables(model, batch, jax.random.PRNGKey(0)))
  return flops.matmul_flops(
      lambda p, s, b: model.apply({"params": p, **s}, b, train=False), params, model_state, batch)


def _generic_workload(name: str, make: Callable, unit: str):
  """A train step of a model / task / batch from `make(tiny)`; FLOPs = 3 x counted forward."""
  def run(opts: Options) -> dict:
    import jax
    import jax.numpy as jnp

    from ptft_jax import optim
    from ptft_jax.config import defaults
    from ptft_jax.train import steps

    model, task, batch, tokens = make(opts.tiny)
    step, state, device_batch = _compiled_step(
        model, task, defaults.base_config().optim, batch, optim, steps, jax, jnp)
    examples = len(next(iter(batch.values())))
    model_batch = {k: v for k, v in batch.items() if k != "label"}
    return _run_steps(name, step, state, device_batch, opts, examples=examples,
                      tokens=tokens, flops=3 * _forward_flops(model, model_batch),
                      batch_size=examples, unit=unit)
  return run


def _resnet(tiny: bool):
  import numpy as np

  from ptft_jax import tasks
  from ptft_jax.models import ResNet, heads
  from ptft_jax.models.base import Model

  batch_size, size, width = (4, 8, 4) if tiny else (64, 32, 64)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, 10, batch_size).astype(np.int32)}
  model = Model(ResNet(depth=18, width=width, small_input=True),
                {"classifier": heads.ClassifierHead(num_classes=10)})
  return model, tasks.Classification(num_classes=10), batch, None


def _lstm(tiny: bool):
  from ptft_jax.models import RnnBackbone
  from ptft_jax.models import heads as heads_text
  from ptft_jax.models.base import Model
  from ptft_jax.tasks import text as tasks_text

  shape = text_shape(tiny)
  hidden = 16 if tiny else 512
  batch = _token_batch(shape)
  del batch["token_type_ids"]
  batch["label"] = (batch["input_ids"][:, 1] % 2).astype(batch["input_ids"].dtype)
  model = Model(RnnBackbone(vocab_size=shape.vocab_size, cell="lstm", hidden_size=hidden,
                            num_layers=2),
                {"classifier": heads_text.SequenceClassificationHead(2, dropout_rate=0.1)})
  task = tasks_text.TextClassification(num_classes=2, vocab_size=shape.vocab_size)
  return model, task, batch, shape.tokens


# --- input pipelines, checkpoints -------------------------------------------------------------


def _time_batches(iterator, count: int) -> list[float]:
  next(iterator)  # first batch: opens files, builds caches
  times = []
  for _ in range(count):
    t0 = time.perf_counter()
    next(iterator)
    times.append(time.perf_counter() - t0)
  return times


def _input_digits(opts: Options) -> dict:
  """The embedded-digits train iterator (batch 64) against the digits CNN step it feeds."""
  import jax
  import jax.numpy as jnp

  from ptft_jax import data, optim, tasks
  from ptft_jax.config import defaults
  from ptft_jax.models import build_model
  from ptft_jax.train import steps

  config = defaults.base_config()
  config.model = {"name": "cnn", "channels": (32, 64), "dense_sizes": (128,)}
  bundle = data.make_data(config.data, seed=0)
  times = _time_batches(bundle.train_iterator, 20 if opts.tiny else 200)
  batch_s = statistics.fmean(times)  # the mean: epoch boundaries (a new permutation) count
  task, heads = tasks.build_task(config, bundle.info)
  model = build_model(config.model, heads)
  batch = {k: v for k, v in next(bundle.train_iterator).items() if k != "valid"}
  step, state, device_batch = _compiled_step(
      model, task, config.optim, batch, optim, steps, jax, jnp)
  consumer = _run_steps("input_digits", step, state, device_batch, opts,
                        examples=config.data.batch_size, tokens=None,
                        flops=3 * _forward_flops(model, {"image": batch["image"]}))
  return _record(
      "input_digits", step_s=batch_s, examples_per_s=config.data.batch_size / batch_s,
      peak_memory_bytes=consumer["peak_memory_bytes"], memory_source=consumer["memory_source"],
      batch_size=config.data.batch_size, step_s_median=statistics.median(times),
      consumer="digits CNN train step", consumer_step_s=consumer["step_s"],
      headroom=consumer["step_s"] / batch_s)


def _input_text(opts: Options) -> dict:
  """Sentence-pair MLM batches (MiniLM vocabulary) from the shipped corpus, host side only."""
  from ptft_jax.convert.minilm import minilm_dir
  from ptft_jax.data import text

  shape = text_shape(False)
  dc = text.pretraining_config(format="sentence_pairs", seq_len=shape.seq_len,
                               batch_size=shape.batch_size, vocab_size=shape.vocab_size,
                               vocab=os.path.join(minilm_dir(), "vocab.txt"))
  t0 = time.perf_counter()
  bundle = text.text_data(dc, seed=0)
  setup_s = time.perf_counter() - t0
  times = _time_batches(bundle.train_iterator, 10 if opts.tiny else 100)
  batch_s = statistics.fmean(times)
  memory, source = peak_memory()
  return _record(
      "input_text", step_s=batch_s, examples_per_s=shape.batch_size / batch_s,
      tokens_per_s=shape.tokens / batch_s, peak_memory_bytes=memory, memory_source=source,
      setup_s=setup_s, batch_size=shape.batch_size, seq_len=shape.seq_len,
      step_s_median=statistics.median(times), consumer="bert_mlm")


def _tree_bytes(tree) -> int:
  import jax

  return sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))


def _checkpoint(opts: Options) -> dict:
  """Async save of the bert_mlm train state: blocked time, total, restore (3 rounds, medians)."""
  import jax

  from ptft_jax.train import checkpoint

  _, state, _ = build_text_step("mlm", text_shape(opts.tiny))
  blocked, total, restored = [], [], []
  with tempfile.TemporaryDirectory() as workdir:
    manager = checkpoint.make_manager(workdir, max_to_keep=2)
    for i in range(3):
      state = {**state, "step": state["step"] + 1}
      jax.block_until_ready(state)
      t0 = time.perf_counter()
      checkpoint.save(manager, state, meta={"bench": True})
      t1 = time.perf_counter()
      manager.wait_until_finished()
      t2 = time.perf_counter()
      blocked.append(t1 - t0)
      total.append(t2 - t0)
      if i:
        t0 = time.perf_counter()
        jax.block_until_ready(checkpoint.restore(manager, state))
        restored.append(time.perf_counter() - t0)
    manager.close()
  memory, source = peak_memory()
  return _record(
      "checkpoint", peak_memory_bytes=memory, memory_source=source,
      state_bytes=_tree_bytes(state), save_blocked_s=statistics.median(blocked),
      save_total_s=statistics.median(total), restore_s=statistics.median(restored),
      consumer="bert_mlm")


# --- end to end: length buckets on ragged text --------------------------------------------

E2E_CONFIG = os.path.join(REPO, "configs", "ragged_text.py")


def e2e_arg(opts: Options) -> str:
  """configs/ragged_text.py's argument: its defaults (40 steps of 16), or tiny."""
  return "tiny" if opts.tiny else ""


def _e2e_stage(stage: str, opts: Options):
  """configs/ragged_text.py's config of `stage` (the benchmark's one source of settings)."""
  import importlib.util

  if REPO not in sys.path:  # the config imports its siblings as `configs.common`
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location("ragged_text", E2E_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(e2e_arg(opts)).stages[stage]


def _train_tokens(stage: str, opts: Options) -> tuple[int, int]:
  """(real, padded) tokens of the stage's training batches, from its own data pipeline."""
  from ptft_jax.data.text import text_data

  config = _e2e_stage(stage, opts)
  it = text_data(config.data, config.seed).train_iterator
  batches = [next(it) for _ in range(config.train.steps)]
  return (sum(int(b["attention_mask"].sum()) for b in batches),
          sum(int(b["attention_mask"].size) for b in batches))


def _run_cli_stage(workdir: str, stage: str, opts: Options) -> float:
  """Seconds `python -m ptft_jax.main` takes to run `stage` (after the import stage)."""
  arg = ",".join(filter(None, [e2e_arg(opts), f"only={stage}"]))
  cmd = [sys.executable, "-m", "ptft_jax.main", f"--config={E2E_CONFIG}:{arg}",
         f"--workdir={workdir}"]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
  if proc.returncode:
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {tail}")
  return time.perf_counter() - t0


def _finetune_text_e2e(opts: Options) -> dict:
  """Bucketed vs padded fine-tuning commands: wall time, test accuracy, token counts."""
  fields = {}
  with tempfile.TemporaryDirectory() as workdir:
    _run_cli_stage(workdir, "minilm", opts)  # the HF import, once (untimed)
    for stage in ("bucketed", "padded"):
      wall = _run_cli_stage(workdir, stage, opts)
      with open(os.path.join(workdir, stage, "eval_test.json")) as f:
        accuracy = json.load(f)["accuracy"]
      with open(os.path.join(workdir, stage, "config.json")) as f:
        ran = json.load(f)
      real, padded = _train_tokens(stage, opts)
      examples = ran["train"]["steps"] * ran["data"]["batch_size"]
      fields[stage] = {"wall_s": wall, "test_accuracy": accuracy, "steps": ran["train"]["steps"],
                       "examples_per_s": examples / wall, "tokens": real,
                       "padded_tokens": padded}
  b, p = fields["bucketed"], fields["padded"]
  memory, source = peak_memory()
  return _record("finetune_text_e2e", examples_per_s=b["examples_per_s"],
                 peak_memory_bytes=memory, memory_source=source, bucketed=b, padded=p,
                 speedup_vs_padded=p["wall_s"] / b["wall_s"])


def run_trainer_peer(python: str, opts: Options) -> dict:
  """tools/bench_trainer_peer.py on configs/ragged_text.py's data and settings, timed whole."""
  from ptft_jax.convert.minilm import minilm_dir
  from ptft_jax.data.text import sources

  if not os.path.isfile(python):
    return _record("peer_finetune_text_e2e", error=f"--peer-python {python}: no such file; "
                   "run `bash launch/setup_torch_peer.sh` or pass --peer-python")
  data = os.path.dirname(sources.example_path("reviews_ragged", "train"))
  ours = _e2e_stage("bucketed", opts)  # the same steps, batch and learning rate
  steps, batch = ours.train.steps, ours.data.batch_size
  cmd = [python, TRAINER_PEER_SCRIPT, "--model", minilm_dir(), "--data", data,
         "--steps", str(steps), "--batch", str(batch), "--lr", str(ours.optim.lr),
         "--seq-len", str(ours.data.seq_len), "--seed", str(ours.seed)]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  # Trainer prints its own Python dicts to stdout; the record is the JSON line.
  records = [json.loads(line) for line in proc.stdout.splitlines()
             if line.startswith('{"workload"')]
  if proc.returncode or not records:
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return _record("peer_finetune_text_e2e", error=f"exit {proc.returncode}: {tail}")
  fields = {k: v for k, v in records[-1].items() if k != "workload"}
  return _record("peer_finetune_text_e2e", **fields | {
      "wall_s": wall, "examples_per_s": steps * batch / wall})


COMPILE_DEPTHS = (4, 48)


def compile_seconds(num_layers: int, scan_layers: bool, *, tiny: bool = False) -> float:
  """Seconds to lower and compile the BERT MLM train step (init not counted)."""
  from ptft_jax.bench import flops

  shape = flops.TransformerShape(
      num_layers=num_layers, hidden_size=16 if tiny else 128, num_heads=2,
      intermediate_size=32 if tiny else 512, vocab_size=200 if tiny else 1000, batch_size=4,
      seq_len=16 if tiny else 64, predictions=3 if tiny else 8)
  step, state, batch = build_text_step(
      "mlm", shape, model_overrides={"scan_layers": scan_layers})
  t0 = time.perf_counter()
  step.lower(state, batch).compile()
  return time.perf_counter() - t0


def _compile_scan(opts: Options) -> dict:
  depths = (1, 4) if opts.tiny else COMPILE_DEPTHS
  compile_seconds(depths[0], False, tiny=opts.tiny)  # untimed: the process's first-jit costs
  seconds = {f"{'scanned' if scan else 'looped'}_{n}": compile_seconds(n, scan, tiny=opts.tiny)
             for scan in (True, False) for n in depths}
  lo, hi = depths
  memory, source = peak_memory()
  return _record(
      "compile_scan", peak_memory_bytes=memory, memory_source=source, depths=list(depths),
      compile_s=seconds, scanned_ratio=seconds[f"scanned_{hi}"] / seconds[f"scanned_{lo}"],
      looped_ratio=seconds[f"looped_{hi}"] / seconds[f"looped_{lo}"])


def _peak(opts: Options) -> dict:
  n = 256 if opts.tiny else 2048
  f32, bf16 = matmul_peak("float32", n), matmul_peak("bfloat16", n)
  memory, source = peak_memory()
  return _record("peak", flops_per_s=f32, float32_flops_per_s=f32, bfloat16_flops_per_s=bf16,
                 matmul_size=n, peak_memory_bytes=memory, memory_source=source)


WORKLOADS: dict[str, Callable[[Options], dict]] = {
    "peak": _peak,
    "bert_mlm": _text_workload("bert_mlm", "mlm"),
    "bert_mlm_bf16": _text_workload("bert_mlm_bf16", "mlm", dtype="bfloat16"),
    "bert_cls": _text_workload("bert_cls", "cls"),
    "bert_cls_frozen": _text_workload("bert_cls_frozen", "cls", frozen=True),
    "gpt_lm": _text_workload("gpt_lm", "lm"),
    "resnet": _generic_workload("resnet", _resnet, "images"),
    "lstm": _generic_workload("lstm", _lstm, "sequences"),
    "input_digits": _input_digits,
    "input_text": _input_text,
    "checkpoint": _checkpoint,
    "compile_scan": _compile_scan,
    "finetune_text_e2e": _finetune_text_e2e,
    "gpu_bert_base_mlm": _gpu_workload("gpu_bert_base_mlm"),
    "gpu_decoder_1b": _gpu_workload("gpu_decoder_1b"),
}


def run_workload(name: str, opts: Options = Options()) -> dict:
  """Measures one workload in this process; returns its record."""
  if name not in WORKLOADS:
    raise ValueError(f"unknown workload {name!r}; choose from {sorted(WORKLOADS)}")
  return WORKLOADS[name](opts)


# --- the command ------------------------------------------------------------------------------


def _child(name: str, opts: Options, in_process: bool) -> dict:
  if in_process:
    return run_workload(name, opts)
  cmd = [sys.executable, "-m", "ptft_jax.bench", "--child", name, "--steps", str(opts.steps),
         "--warmup", str(opts.warmup)] + (["--tiny"] if opts.tiny else [])
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return _record(name, error=f"exit {proc.returncode}: {tail}")
  return json.loads(lines[-1])


def run_peer(python: str, opts: Options) -> list[dict]:
  """Runs tools/bench_torch_peer.py with `python` (a venv with torch + transformers)."""
  if not os.path.isfile(python):
    return [_record("peer", error=f"--peer-python {python}: no such file; run "
                                  "`bash launch/setup_torch_peer.sh` or pass --peer-python")]
  cmd = [python, PEER_SCRIPT, "--steps", str(opts.steps), "--warmup", str(opts.warmup)]
  proc = subprocess.run(cmd + (["--tiny"] if opts.tiny else []), capture_output=True,
                        text=True, check=False)
  records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not records:
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return [_record("peer", error=f"{' '.join(cmd)}: exit {proc.returncode}: {tail}")]
  return records


def summarize(records: list[dict]) -> dict:
  """The targets this run can check: {target: {"value", "goal", "met"}}."""
  by = {r["workload"]: r for r in records
        if r.get("step_s") or r.get("save_blocked_s") or r.get("scanned_ratio")}
  checks = {}

  def check(name, value, goal, higher=True):
    checks[name] = {"value": value, "goal": goal,
                    "met": value >= goal if higher else value <= goal}

  def ratio(a, b, key="examples_per_s"):
    return by[a][key] / by[b][key] if a in by and b in by else None

  # Issue 17's goals: level with PyTorch on fine-tuning, 2x on masked LM, 0.65 of the peak.
  for ours, peer, goal in (("bert_mlm", "peer_bert_mlm", 2.0), ("bert_cls", "peer_bert_cls", 1.0)):
    if (r := ratio(ours, peer)) is not None:
      check(f"{ours}_vs_peer", r, goal)
    if ours in by:
      check(f"{ours}_peak_share", by[ours]["peak_share"], 0.65)
  e2e = next((r for r in records if r["workload"] == "finetune_text_e2e" and "bucketed" in r),
             None)
  trainer = next((r for r in records if r["workload"] == "peer_finetune_text_e2e"
                  and "wall_s" in r), None)
  if e2e:
    check("e2e_bucketed_vs_padded_examples_per_s", e2e["speedup_vs_padded"], 1.7)
  if e2e and trainer:
    check("e2e_wall_vs_hf_trainer", e2e["bucketed"]["wall_s"] / trainer["wall_s"], 0.8,
          higher=False)
  if (r := ratio("bert_cls_frozen", "bert_cls", "step_s")) is not None:
    check("head_only_step_fraction", r, 0.4, higher=False)
  if (r := ratio("bert_mlm", "bert_mlm_bf16", "step_s")) is not None:
    check("bf16_speedup", r, 1.5)
  if "input_digits" in by:
    check("input_digits_headroom", by["input_digits"]["headroom"], 10.0)
  if "input_text" in by and "bert_mlm" in by:
    check("input_text_headroom", by["bert_mlm"]["step_s"] / by["input_text"]["step_s"], 10.0)
  if "checkpoint" in by and "bert_mlm" in by:
    check("checkpoint_blocked_fraction_of_step",
          by["checkpoint"]["save_blocked_s"] / by["bert_mlm"]["step_s"], 0.1, higher=False)
  # Issue 17, on one H100 / H200: BERT-base MLM >= 45% MFU, the ~1B decoder >= 40%.
  for name, goal in (("gpu_bert_base_mlm", 0.45), ("gpu_decoder_1b", 0.40)):
    if name in by and by[name].get("mfu") is not None:
      check(f"{name}_mfu", by[name]["mfu"], goal)
  if "compile_scan" in by:  # issue 14: compile time flat in depth with scanned layers
    check("scanned_compile_deep_vs_shallow", by["compile_scan"]["scanned_ratio"], 1.5,
          higher=False)
  return _record("summary", targets=checks)


DEFAULT_ORDER = ("peak", "bert_mlm", "bert_mlm_bf16", "bert_cls", "bert_cls_frozen", "gpt_lm",
                 "resnet", "lstm", "input_digits", "input_text", "checkpoint")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ptft_jax.bench", description=__doc__.split(
      "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS), default=None,
                      help="workloads to run (default: all); `peak` always runs first")
  parser.add_argument("--out", help="also append the JSON lines to this file")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per workload")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--peer", action="store_true", help="also run the PyTorch peer")
  parser.add_argument(
      "--peer-python", default=os.environ.get("PTFT_TORCH_PYTHON", DEFAULT_PEER_PYTHON),
      help="the Python with torch + transformers for --peer (bash launch/setup_torch_peer.sh "
           "makes .venv-torch/bin/python, the default)")
  parser.add_argument("--in-process", action="store_true",
                      help="run every workload in this process (peak memory then accumulates)")
  parser.add_argument("--tiny", action="store_true", help="toy shapes (smoke tests)")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  opts = Options(steps=args.steps, warmup=args.warmup, tiny=args.tiny)
  if args.child:
    print(json.dumps(run_workload(args.child, opts)), flush=True)
    return 0
  names = ["peak"] + [w for w in (args.workload or DEFAULT_ORDER) if w != "peak"]
  out = open(args.out, "a") if args.out else None  # noqa: SIM115 -- closed below

  def emit(record: dict):
    line = json.dumps(record)
    print(line, flush=True)
    if out:
      out.write(line + "\n")
      out.flush()

  records = []
  for name in names:
    records.append(_child(name, opts, args.in_process))
    emit(records[-1])
    if name == "bert_cls" and args.peer:  # the peer runs next to the workloads it is compared with
      for record in run_peer(args.peer_python, opts):
        records.append(record)
        emit(record)
    if name == "finetune_text_e2e" and args.peer:
      records.append(run_trainer_peer(args.peer_python, opts))
      emit(records[-1])
  if args.peer and "bert_cls" not in names and "finetune_text_e2e" not in names:
    for record in run_peer(args.peer_python, opts):
      records.append(record)
      emit(record)
  emit(summarize(records))
  if out:
    out.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
