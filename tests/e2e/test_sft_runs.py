"""SFT through the real loop: configs/llm_sft.py tiny (from scratch) and from imported Hugging
Face decoders (full, LoRA, accumulation), exact resume of the packed stream, continued
pretraining on text, and chunked cross-entropy without a [batch, seq, vocab] buffer."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ptft_jax as pj
from ptft_jax import convert, tasks
from ptft_jax.data.text import CORPUS_FILE, TextInfo, Vocab
from ptft_jax.models import Model, gpt
from ptft_jax.train import checkpoint, preemption
from tests.helpers import FIXTURES, flat, load_config

pytestmark = pytest.mark.usefixtures("compile_cache")
HF = f"{FIXTURES}/hf_decoders"


def _quick(c, steps: int):
  c.train.steps, c.train.log_every, c.train.checkpoint_every = steps, steps, steps
  c.train.eval_every, c.train.tensorboard = 0, False
  c.data.batch_size, c.data.eval_batch_size = 8, 8
  return c


def _tiny():
  c = _quick(load_config("llm_sft", "tiny,steps=24,seq_len=64"), 24)
  c.eval_splits = ("validation",)
  return c


def test_tiny_sft_learns_and_resumes_exactly(tmp_path, monkeypatch):
  straight = pj.train_and_evaluate(_tiny(), str(tmp_path / "straight"))["validation"]
  assert set(straight) >= {"loss", "perplexity", "accuracy", "tokens"}
  assert straight["tokens"] == 788 and straight["loss"] < np.log(400) - 1  # learned something
  assert straight["perplexity"] == pytest.approx(np.exp(straight["loss"]), rel=1e-6)
  # Stopped after step 12 (saved there), then resumed: the packed stream continues exactly.
  real, count = tasks.model_batch, [0]

  def model_batch(task, batch):
    count[0] += "valid" not in batch  # train batches only
    if count[0] == 12:
      preemption.request()  # served before step 13
    return real(task, batch)

  with monkeypatch.context() as m:
    m.setattr(tasks, "model_batch", model_batch)
    with pytest.raises(preemption.Preempted, match="saved step 12"):
      pj.train_and_evaluate(_tiny(), str(tmp_path / "resumed"))
  resumed = pj.train_and_evaluate(_tiny(), str(tmp_path / "resumed"))["validation"]
  assert resumed == straight
  a = flat(checkpoint.load_params(str(tmp_path / "straight"))[0]["params"])
  b = flat(checkpoint.load_params(str(tmp_path / "resumed"))[0]["params"])
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  # The run generates on its own: tokenizer files copied in, prompts through its template.
  generator = pj.load_generator(str(tmp_path / "straight"))
  assert generator.tokenizer.path == str(tmp_path / "straight" / "tokenizer.json")
  assert generator.chat_prompts and generator.tokenizer.chat_template
  prompt = "Uppercase: a b"
  ids = generator.encode_prompts([prompt])[0]
  assert "<|im_start|>user\nUppercase: a b<|im_end|>" in generator.tokenizer.decode(
      ids, skip_special_tokens=False)
  out = generator.generate([prompt], max_new_tokens=4)[0]
  assert out.prompt_tokens == len(ids) and 1 <= len(out.token_ids) + (out.finish_reason == "eos")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """The llama (untied) and qwen2 (tied, ChatML) fixtures imported as workdirs."""
  out = {}
  for arch in ("llama", "qwen2"):
    workdir = tmp_path_factory.mktemp(arch)
    convert.import_hf(f"{HF}/{arch}", str(workdir))
    out[arch] = str(workdir)
  return out


def test_lora_sft_from_an_imported_decoder(imported, tmp_path):
  data = "pkg://sft_tiny"
  c = _quick(load_config("llm_sft", f"init={imported['llama']},train={data}/train.jsonl,"
                                    f"validation={data}/validation.jsonl,lora=4,seq_len=64,"
                                    "accumulation=2,loss_chunk=16,chat_template=none"), 6)
  c.data.batch_size = 16  # 2 microbatches of 8 rows, one per simulated device
  assert c.data.tokenizer.path == imported["llama"] and not c.task.tied
  result = pj.train_and_evaluate(c, str(tmp_path / "run"))["validation"]
  assert np.isfinite(result["loss"]) and result["tokens"] > 0
  report = json.loads((tmp_path / "run" / "transfer_report.json").read_text())
  assert "params/heads/lm/output/kernel" in report["loaded"]
  assert not [p for p in report["initialized"] if not p.startswith("params/lora/")]
  groups = json.loads((tmp_path / "run" / "param_groups.json").read_text())
  adapters = [p for p in report["initialized"] if p.endswith("/a")]
  assert len(adapters) == 2 * 7  # q, k, v, out, gate, intermediate, output in 2 layers
  assert groups["trainable"] == sum(  # only the adapters train
      np.prod(v.shape) for k, v in flat(checkpoint.load_params(
          str(tmp_path / "run"))[0]["params"]).items() if k.startswith("lora/"))
  base = flat(checkpoint.load_params(imported["llama"])[0]["params"])
  tuned = flat(checkpoint.load_params(str(tmp_path / "run"))[0]["params"])
  assert all(np.array_equal(base[k], tuned[k]) for k in base)  # the base is frozen


def test_full_sft_and_continued_pretraining_from_an_imported_chat_model(imported, tmp_path):
  c = _quick(load_config("llm_sft", f"init={imported['qwen2']},data=pkg://sft_tiny/"
                                    "validation.jsonl,seq_len=128"), 4)
  assert c.task.tied and c.data.holdout == 0.05 and c.data.chat_template == "auto"
  result = pj.train_and_evaluate(c, str(tmp_path / "sft"))["validation"]  # 5% held out
  assert np.isfinite(result["loss"]) and 0 < result["tokens"] < 788 / 5
  corpus = _quick(load_config("llm_sft", f"init={imported['qwen2']},corpus={CORPUS_FILE},"
                                         "seq_len=64"), 3)
  assert corpus.task.name == "causal_lm" and corpus.data.format == "packed"
  result = pj.train_and_evaluate(corpus, str(tmp_path / "corpus"))["validation"]
  assert np.isfinite(result["loss"]) and result["tokens"] > 1000


def test_chunked_loss_never_holds_full_logits():
  """The compiled gradient of a 4096-token vocabulary, seq 512: with chunks of 64 positions
  no f32[2, 512, 4096] buffer exists and XLA's temporaries shrink by more than the 16 MiB
  of logits (measured: 17.0 MiB chunked, attention scores the largest; 43.1 MiB without)."""
  vocab, seq, batch = 4096, 512, 2
  info = TextInfo(name="x", format="sft", seq_len=seq, lowercase=False,
                  vocab=Vocab(path="", size=vocab, pad_id=0, unk_id=0, cls_id=1, sep_id=2,
                              mask_id=0, exact=False))
  rows = {k: jnp.ones((batch, seq), jnp.int32)
          for k in ("input_ids", "segment_ids", "attention_mask", "loss_mask")}

  def compiled(chunk: int):
    task, head = tasks.BUILDERS["sft"]({"tied": False, "loss_chunk": chunk}, info)
    model = Model(gpt(vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2,
                      intermediate_size=64, max_position_embeddings=seq, dropout_rate=0.0,
                      attention_dropout_rate=0.0), {"lm": head})
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), task.inputs(rows, None, False))

    def loss(p, b):
      inputs = task.inputs(b, None, True)
      return task.loss(model.apply(p, tasks.model_batch(task, inputs), train=True), inputs, b)[0]

    return jax.jit(jax.grad(loss)).lower(params, rows).compile()

  full, chunked = compiled(0), compiled(64)
  logits = f"f32[{batch},{seq},{vocab}]"
  assert logits in full.as_text()
  assert not re.search(rf"f32\[{batch},{seq},{vocab}\]", chunked.as_text())
  full_mem, chunked_mem = full.memory_analysis(), chunked.memory_analysis()
  assert chunked_mem.temp_size_in_bytes + 4 * batch * seq * vocab < full_mem.temp_size_in_bytes
