"""Using a trained run: load a checkpoint, predict, evaluate.

  predictor.py  load_run / load_predictor: a run directory -> a jitted predictor
                (class names, length buckets for text)
  predict.py    `python -m ptft_jax.predict`: files or JSONL in, JSONL predictions out
  evaluate.py   `python -m ptft_jax.main --mode=eval`: score a checkpoint on a split

May import everything below it: config, data, models, tasks, optim, parallel, train.
Nothing imports from here except the CLI entry points and the package API.
"""

from ptft_jax.inference.predictor import Predictor, load_predictor, load_run

__all__ = ["Predictor", "load_predictor", "load_run"]
