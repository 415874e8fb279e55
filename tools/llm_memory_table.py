"""Prints docs/llm.md's memory table: what fine-tuning a decoder costs per device.

  python tools/llm_memory_table.py

Parameters are counted from our own model (`jax.eval_shape` of the backbone + untied
head, no weights materialized) for the published shapes of each model. ptft_jax keeps
parameters in float32 and AdamW's two moments in float32: full fine-tuning holds
4 (param) + 4 (gradient) + 8 (moments) = 16 bytes per parameter; LoRA holds the frozen
float32 params plus 16 bytes per adapter parameter (rank 16 on q/k/v/out and the three
MLP kernels). Both are divided evenly over `fsdp` devices; activations come on top and
depend on batch x sequence (the run prints its own estimate before the first step:
docs/scaling.md).
"""

import jax
import jax.numpy as jnp
import ml_collections

from ptft_jax import models

GIB = 1024 ** 3
# Published shapes (config.json of each model on the Hugging Face hub).
SHAPES = {
    "Llama-3.2-1B": dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                         intermediate_size=8192, vocab_size=128256, tied=True),
    "Qwen2.5-7B": dict(hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                       intermediate_size=18944, vocab_size=152064, tied=False, qkv_bias=True),
    "Llama-3.1-8B": dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                         intermediate_size=14336, vocab_size=128256, tied=False),
    "Llama-3.1-70B": dict(hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8,
                          intermediate_size=28672, vocab_size=128256, tied=False),
}
LORA_RANK = 16


def count(shape: dict) -> tuple[int, int]:
  """(parameters, LoRA rank-16 adapter parameters) of a llama-shaped decoder."""
  shape = dict(shape)
  tied = shape.pop("tied")
  mc = ml_collections.ConfigDict(dict(
      name="gpt", norm="rms", position_embedding="rope", activation="silu", gated_mlp=True,
      qkv_bias=shape.pop("qkv_bias", False), out_bias=False, mlp_bias=False,
      max_position_embeddings=8192, scan_layers=True, **shape))
  backbone = models.build_backbone(mc)
  abstract = jax.eval_shape(lambda: backbone.init(
      jax.random.key(0), {"input_ids": jnp.zeros((1, 8), jnp.int32)}, train=False))
  leaves = jax.tree_util.tree_flatten_with_path(abstract["params"])[0]
  total = sum(x.size for _, x in leaves)
  if not tied:
    total += shape["hidden_size"] * shape["vocab_size"]
  lora = 0
  for path, x in leaves:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if x.ndim == 3 and name.endswith("kernel"):  # [layers, in, out]
      lora += x.shape[0] * LORA_RANK * (x.shape[1] + x.shape[2])
  return total, lora


def main():
  print("| model | parameters | bf16 weights (inference) | full fine-tune, 1 device "
        "| full, fsdp=8 | full, fsdp=64 | LoRA r=16, 1 device | LoRA, fsdp=8 |")
  print("|---|---|---|---|---|---|---|---|")
  for name, shape in SHAPES.items():
    n, lora = count(shape)
    full = 16 * n / GIB
    low = (4 * n + 16 * lora) / GIB
    print(f"| {name} | {n / 1e9:.2f} B | {2 * n / GIB:.1f} GiB | {full:.0f} GiB | "
          f"{full / 8:.1f} GiB | {full / 64:.1f} GiB | {low:.1f} GiB | {low / 8:.1f} GiB |")


if __name__ == "__main__":
  main()
