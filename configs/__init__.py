"""Experiment configs: one `get_config(arg)` per file; each docstring gives its command and result.

Run one with `python -m ptft_jax.main --config=configs/NAME.py[:ARG] --workdir=DIR`.
A config may import `configs.common` and its sibling configs (`from configs import bert`).
"""
