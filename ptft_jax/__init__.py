"""ptft_jax: pretrain -> fine-tune in JAX/Flax.

The functional API (`import ptft_jax as pj`; docs/api.md shows it at work):

  pj.run(config, workdir)          run a whole config (all stages) in a workdir
  pj.train_and_evaluate            one stage
  pj.base_config()                 every config key with its default
  pj.data                          make_data, dataset_info, train_iterator, eval_batches
  pj.models                        Model (backbone + heads), backbones, heads, build_model
  pj.tasks                         build_task, Classification, Contrastive, ... (pj.tasks.text)
  pj.losses, pj.metrics            per-example losses; metrics over a split
  pj.optim                         make_optimizer (param groups, presets, schedules), LoRA
  pj.make_train_step / pj.make_eval_step / pj.init_variables
  pj.make_mesh, pj.host_to_global, pj.replicated
  pj.checkpoint                    make_manager, save, restore, load_params, transfer
  pj.load_predictor(workdir)       predict with a trained run
  pj.load_generator(path)          generate text with a decoder (run, imported workdir, HF dir)
  pj.load_params(path, mesh=...)   (model config, params) of a run or a HF model dir, sharded
  pj.load_hf(model_dir)            (model config, params) of a HF bert/gpt2/llama/mistral/
                                   qwen2/gemma directory (pj.convert: import and export)
  pj.models.causal_lm_logits       a decoder's [batch, seq, vocab] logits from its params

How the packages depend on each other: README.md, "How the code is organized".
"""

# First, before jax is imported: `python -m ptft_jax.<command>` re-executes itself with
# huge pages for XLA's buffers (huge_pages.py); a plain `import ptft_jax` never does.
from ptft_jax.huge_pages import reexec_command_with_huge_pages

reexec_command_with_huge_pages()

from ptft_jax import data, models, optim, tasks
from ptft_jax.config import base_config
from ptft_jax.convert import load_hf
from ptft_jax.inference.generator import load_generator
from ptft_jax.inference.predictor import load_predictor
from ptft_jax.optim import make_optimizer, make_schedule
from ptft_jax.parallel import sharding
from ptft_jax.parallel.sharding import host_to_global, make_mesh, replicated
from ptft_jax.tasks import losses, metrics
from ptft_jax.tasks import text as tasks_text
from ptft_jax.train import checkpoint, run, train_and_evaluate
from ptft_jax.train.placement import load_params
from ptft_jax.train.steps import init_variables, make_eval_step, make_train_step

__all__ = [
    "base_config", "checkpoint", "data", "host_to_global", "init_variables", "load_generator",
    "load_hf", "load_params", "load_predictor", "losses", "make_eval_step", "make_mesh",
    "make_optimizer", "make_schedule", "make_train_step", "metrics", "models", "optim",
    "replicated", "run", "sharding", "tasks", "tasks_text", "train_and_evaluate",
]
