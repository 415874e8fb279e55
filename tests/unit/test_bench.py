"""The benchmark command: record keys, FLOP formulas by hand, the targets summary."""


import jax
import jax.numpy as jnp

from ptft_jax.bench import benchmark as bench
from ptft_jax.bench import flops
from ptft_jax.models import transformer
from ptft_jax.models.base import Model

TINY = bench.text_shape(tiny=True)  # 2 layers, H 16, F 32, V 101, B 4, S 16, P 3


def test_flop_formulas_by_hand():
  assert (TINY.num_layers, TINY.hidden_size, TINY.intermediate_size, TINY.vocab_size,
          TINY.batch_size, TINY.seq_len, TINY.predictions) == (2, 16, 32, 101, 4, 16, 3)
  layers = 6 * 2 * (4 * 16 * 16 + 2 * 16 * 32) * (4 * 16)  # 1,572,864
  attention = 12 * 2 * 4 * 16 ** 2 * 16  # 393,216
  assert flops.transformer_train_flops(TINY, "mlm") == layers + attention + 6 * (
      16 * 16 + 16 * 101) * 4 * 3 == 2_100_864
  assert flops.transformer_train_flops(TINY, "lm") == layers + attention + 6 * 16 * 101 * 64
  assert flops.transformer_train_flops(TINY, "classifier") == 1_972_992
  # Frozen backbone: forward everywhere + the classifier's weight gradient.
  assert flops.transformer_train_flops(TINY, "classifier", frozen_backbone=True) == (
      (layers + attention) // 3 + 2 * (16 * 16 + 16 * 2) * 4 + 2 * 16 * 2 * 4)


def test_jaxpr_count_equals_the_formula():
  config = transformer.TransformerConfig(
      vocab_size=101, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32,
      max_position_embeddings=16, pooler=False)
  model = Model(transformer.BertEncoder(config), {"mlm": transformer.MaskedLMHead()})
  batch = {"input_ids": jnp.zeros((4, 16), jnp.int32),
           "masked_positions": jnp.zeros((4, 3), jnp.int32)}
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"]
  loss = lambda p: model.apply({"params": p}, batch)["mlm"].sum()
  assert flops.matmul_flops(jax.grad(loss), params) == flops.transformer_train_flops(TINY, "mlm")


def test_summary_checks_each_target():
  rec = lambda name, **kw: bench._record(name, **kw)
  records = [
      rec("bert_mlm", step_s=1.0, examples_per_s=32.0, peak_share=0.65),
      rec("peer_bert_mlm", step_s=4.0, examples_per_s=8.0),
      rec("bert_mlm_bf16", step_s=0.8, examples_per_s=40.0),
      rec("bert_cls", step_s=0.5, examples_per_s=50.0, peak_share=0.5),
      rec("peer_bert_cls", step_s=0.6, examples_per_s=53.3),
      rec("bert_cls_frozen", step_s=0.2, examples_per_s=160.0),
      rec("input_digits", step_s=0.001, headroom=30.0),
      rec("input_text", step_s=0.2),
      rec("checkpoint", save_blocked_s=0.05),
      rec("finetune_text_e2e", examples_per_s=12.8, bucketed={"wall_s": 50.0},
          padded={"wall_s": 80.0}, speedup_vs_padded=1.6),
      rec("peer_finetune_text_e2e", wall_s=80.0),
      rec("gpu_bert_base_mlm", step_s=0.05, mfu=0.47),
      rec("gpu_decoder_1b", step_s=0.3, mfu=0.38),
  ]
  t = bench.summarize(records)["targets"]
  assert {k: v["met"] for k, v in t.items()} == {
      "bert_mlm_vs_peer": True, "bert_mlm_peak_share": True, "bert_cls_vs_peer": False,
      "bert_cls_peak_share": False, "head_only_step_fraction": True, "bf16_speedup": False,
      "input_digits_headroom": True, "input_text_headroom": False,
      "checkpoint_blocked_fraction_of_step": True,
      "e2e_bucketed_vs_padded_examples_per_s": False, "e2e_wall_vs_hf_trainer": True,
      "gpu_bert_base_mlm_mfu": True, "gpu_decoder_1b_mfu": False}
  assert t["bert_mlm_vs_peer"]["value"] == 4.0 and t["bf16_speedup"]["value"] == 1.25
  assert t["e2e_wall_vs_hf_trainer"]["value"] == 50.0 / 80.0


def test_missing_peer_python_names_the_setup_script(tmp_path):
  records = bench.run_peer(str(tmp_path / "no-such-python"), bench.Options(tiny=True))
  assert len(records) == 1 and records[0]["workload"] == "peer"
  assert "launch/setup_torch_peer.sh" in records[0]["error"]
  assert bench.DEFAULT_PEER_PYTHON.endswith(".venv-torch/bin/python")


def test_gpu_mfu_uses_the_datasheet_peak_of_known_devices():
  assert bench.datasheet_bf16_peak("NVIDIA H200") == 989e12
  assert bench.datasheet_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
  assert bench.datasheet_bf16_peak("cpu") is None
  kind, sizes, overrides = bench.GPU_WORKLOADS["gpu_decoder_1b"]
  # configs/decoder_1b.py's shape: 976,183,296 parameters (tests/e2e/test_scale_configs.py).
  assert (kind, sizes["num_layers"], sizes["hidden_size"], sizes["intermediate_size"],
          sizes["vocab_size"], sizes["seq_len"]) == ("lm", 18, 2048, 8192, 32000, 2048)
  assert overrides["attention_dropout_rate"] == 0.0  # so that "auto" attention is cuDNN's
