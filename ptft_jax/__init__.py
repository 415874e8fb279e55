"""ptft_jax: pretrain -> fine-tune in JAX/Flax.

The functional API (`import ptft_jax as pj`):

  pj.models         Model (backbone + heads), MlpBackbone, CnnBackbone, heads, build_model
  pj.losses         softmax_cross_entropy, mean_squared_error, nt_xent (per-example)
  pj.metrics        classification_metrics, confusion_matrix
  pj.tasks          Classification, DenoisingAutoencoder, Contrastive
  pj.tasks_text     MaskedLM, CausalLM, TextClassification, TextRegression, mask_tokens
  pj.data           dataset_info, train_iterator, eval_batches (TFDS + Grain)
  pj.make_optimizer optax transformation from a config (param groups, schedules, clipping)
  pj.make_train_step / pj.make_eval_step / pj.init_variables
  pj.make_mesh, pj.host_to_global, pj.replicated
  pj.checkpoint     make_manager, save, restore, load_params, transfer
  pj.run            run a whole config (all stages) in a workdir
"""

from ptft_jax import checkpoint, data, losses, metrics, models, optim, sharding, tasks, tasks_text
from ptft_jax.defaults import base_config
from ptft_jax.inference import load_predictor as load_predictor  # noqa: PLC0414 -- public API
from ptft_jax.optim import make_optimizer, make_schedule
from ptft_jax.sharding import host_to_global, make_mesh, replicated
from ptft_jax.steps import init_variables, make_eval_step, make_train_step
from ptft_jax.train import run, train_and_evaluate

__all__ = [
    "base_config", "checkpoint", "data", "host_to_global", "init_variables", "losses",
    "make_eval_step", "make_mesh", "make_optimizer", "make_schedule", "make_train_step",
    "metrics", "models", "optim", "replicated", "run", "sharding", "tasks", "tasks_text",
    "train_and_evaluate",
]
