"""`python -m ptft_jax.bench`: step time, FLOP/s and MFU of each workload, as JSON lines.

  benchmark.py  the workloads, the timing harness, the same-run matmul peak, the PyTorch peer
  flops.py      FLOP formulas (transformer, conv, matmul) used for MFU

May import anything in ptft_jax; nothing in ptft_jax imports from here.
"""
