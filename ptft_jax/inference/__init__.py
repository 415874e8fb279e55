"""Using a trained run: load a checkpoint, predict, evaluate.

  predictor.py  load_run / load_predictor: a run directory -> a jitted predictor
                (class names, length buckets for text)
  predict.py    `python -m ptft_jax.predict`: files or JSONL in, JSONL predictions out
  evaluate.py   `python -m ptft_jax.main --mode=eval`: score a checkpoint on a split
  generator.py  load_generator / Generator: a decoder -> jitted prefill + KV-cache decoding
  generate.py   `python -m ptft_jax.generate`: prompts (text, token ids, chats) -> JSONL

May import everything below it: config, data, models, tasks, optim, parallel, train.
Nothing imports from here except the CLI entry points and the package API.
"""

from ptft_jax.inference.generator import Generator, load_generator
from ptft_jax.inference.predictor import Predictor, load_predictor, load_run

__all__ = ["Generator", "Predictor", "load_generator", "load_predictor", "load_run"]
