"""The benchmark command: record keys, FLOP formulas by hand, the targets summary."""

import json

import pytest

from ptft_jax.bench import benchmark as bench

TINY = bench.text_shape(tiny=True)  # 2 layers, H 16, F 32, V 101, B 4, S 16, P 3


def test_tiny_workload_record():
  r = bench.run_workload("bert_mlm", bench.Options(steps=2, warmup=0, tiny=True))
  assert set(bench.KEYS) <= set(r)
  assert r["workload"] == "bert_mlm" and r["model_flops_per_step"] == 2_100_864
  assert r["steps"] == 2 and r["step_s_min"] <= r["step_s"] <= r["step_s_max"]
  assert r["examples_per_s"] == pytest.approx(4 / r["step_s"])
  assert r["tokens_per_s"] == pytest.approx(64 / r["step_s"])
  assert r["flops_per_s"] == pytest.approx(2_100_864 / r["step_s"])
  assert r["peak_share"] == pytest.approx(r["flops_per_s"] / r["peak_flops_per_s"])
  assert r["memory_source"] == "rss_high_water" and r["peak_memory_bytes"] > 100 * 2 ** 20
  assert r["compile_s"] == pytest.approx(r["first_step_s"] - r["step_s"]) and r["compile_s"] > 0


def test_command_prints_json_lines_and_summary(capsys, tmp_path):
  out = tmp_path / "bench.jsonl"
  assert bench.main(["--workload", "peak", "--tiny", "--in-process", "--out", str(out)]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["workload"] for r in lines] == ["peak", "summary"]
  assert lines[0]["float32_flops_per_s"] > 0 and lines[0]["bfloat16_flops_per_s"] > 0
  assert [json.loads(line) for line in out.read_text().splitlines()] == lines




def test_gpu_workloads_run_tiny_here_and_say_they_need_a_gpu_at_full_size():
  full = bench.run_workload("gpu_decoder_1b", bench.Options(steps=1, warmup=0))
  assert full["step_s"] is None and "needs a GPU" in full["error"] and "--tiny" in full["error"]
  r = bench.run_workload("gpu_bert_base_mlm", bench.Options(steps=1, warmup=0, tiny=True))
  assert r["model_flops_per_step"] == 2_100_864 and r["dtype"] == "bfloat16"
  assert r["peak_dtype"] == "bfloat16" and r["peak_share"] > 0
  assert r["device_kind"] == "cpu" and r["mfu"] is None  # no datasheet peak for a CPU
