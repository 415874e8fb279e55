"""CLI: Hugging Face models in (BERT and decoder LLMs), decoder LLMs and BERT classifiers out.

  python -m ptft_jax.convert hf --src DIR --workdir OUT
      reads a HF directory by config.json's model_type: bert as hf-bert below; gpt2,
      llama, mistral, qwen2, gemma (model.safetensors or model.safetensors.index.json)
      checked strictly and written as a pretrained workdir (gpt backbone + untied LM
      head; model_config.json and task_config.json for a fine-tuning run; the tokenizer,
      generation and chat-template files present).
  python -m ptft_jax.convert hf-bert --src DIR --workdir OUT
      reads a HF BERT directory (config.json, model.safetensors, vocab.txt),
      checks it strictly and writes a pretrained workdir (backbone + any
      MLM/NSP heads, and vocab.txt).
  python -m ptft_jax.convert export-hf --workdir RUN --out DIR [--checkpoint latest|best|N]
        [--adapter-only] [--max-shard-size 2GB] [--dtype float32|bfloat16|float16]
        [--base-model NAME]
      a decoder run (gpt backbone; causal_lm or sft, full or LoRA): a HF directory that
      transformers' AutoModelForCausalLM.from_pretrained(DIR) loads: the model_type of the
      imported model it was fine-tuned from (else gpt2 / llama / mistral / qwen2 / gemma by
      its shape), LoRA adapters merged, tokenizer and generation files; written tensor by
      tensor, several safetensors files + index above --max-shard-size. --adapter-only
      writes a LoRA run's adapters alone in HF PEFT format (adapter_config.json,
      adapter_model.safetensors) for its base (--base-model names it in the config).
      A text classifier run (text_classification on a bert backbone): a
      BertForSequenceClassification directory that transformers'
      AutoModelForSequenceClassification.from_pretrained(DIR) loads.

  python -m ptft_jax.convert vision --src PATH --workdir OUT [--arch NAME] [--image-size N]
      torchvision / timm ResNet, timm / HF ViT weights (safetensors) -> a pretrained
      workdir with params, BatchNorm statistics, model_config.json and the preprocessing
      the weights expect (preprocessing.json: mean / std, resize, crop); the layout is
      recognized from the tensor names unless --arch names it.

User mistakes print one line (`error: ...`) and exit with status 2; --debug shows tracebacks.
"""

import argparse
import sys
from collections.abc import Sequence

from ptft_jax.errors import UserError


def _hf_bert(args: argparse.Namespace) -> None:
  from ptft_jax.convert import workdir  # Lazy: keeps `--help` fast.

  config, heads = workdir.import_hf_bert(args.src, args.workdir)
  heads_note = f" + heads {heads}" if heads else ""
  print(f"converted {args.src} ({config.num_layers} layers, hidden {config.hidden_size})"
        f"{heads_note} -> {args.workdir}")


def _hf(args: argparse.Namespace) -> None:
  from ptft_jax.convert import workdir  # Lazy: keeps `--help` fast.

  kind, config, heads = workdir.import_hf(args.src, args.workdir)
  heads_note = f" + heads {heads}" if heads else ""
  print(f"converted {args.src} ({kind}: {config.num_layers} layers, hidden "
        f"{config.hidden_size}){heads_note} -> {args.workdir}")


def _export_hf(args: argparse.Namespace) -> None:
  from ptft_jax.convert import run_export  # Lazy: keeps `--help` fast.

  done = run_export.export_run(
      args.workdir, args.out, args.checkpoint, adapter_only=args.adapter_only,
      max_shard_size=args.max_shard_size, dtype=args.dtype, base_model=args.base_model)
  hf = done.hf_config
  head = f"exported {args.workdir} (checkpoint {done.checkpoint}, step {done.step}"
  if done.kind == "adapter":
    print(f"{head}; {done.decoder.model_type} LoRA rank {hf['r']}, alpha {hf['lora_alpha']} on "
          f"{', '.join(hf['target_modules'])}) -> {args.out} (PEFT adapter for "
          f"{hf['base_model_name_or_path']})")
    return
  if done.kind == "decoder":
    d = done.decoder
    layers = hf.get("num_hidden_layers", hf.get("n_layer"))
    hidden = hf.get("hidden_size", hf.get("n_embd"))
    merged = ", LoRA merged" if d.merged else ""
    tokenizer = f"tokenizer from {d.tokenizer}" if d.tokenizer else "no tokenizer found"
    weights = [f for f in d.files if f.endswith(".safetensors")]
    print(f"{head}; {layers} layers, hidden {hidden}{merged}) -> {args.out} "
          f"({hf['architectures'][0]}, {len(weights)} weight file(s), {tokenizer})")
    return
  print(f"exported {args.workdir} (checkpoint {done.checkpoint}, step {done.step}; "
        f"{hf['num_hidden_layers']} layers, hidden {hf['hidden_size']}, labels "
        f"{list(hf['label2id'])}) -> {args.out} ({hf['architectures'][0]})")


def _vision(args: argparse.Namespace) -> None:
  from ptft_jax.convert import vision  # Lazy: keeps `--help` fast.

  vision.run(args)


def _refuse_remote(args) -> None:
  """Conversions read and write local directories only (gs:// workdirs are for runs)."""
  from ptft_jax.utils import is_remote

  for flag in ("src", "workdir", "out"):
    path = getattr(args, flag, None)
    if path and is_remote(path):
      raise UserError(f"--{flag} {path}: convert reads and writes local directories; copy the "
                      f"run here first (gcloud storage cp -r {path} .) and give the local copy")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ptft_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--debug", action="store_true", help="show tracebacks")
  commands = parser.add_subparsers(dest="command", required=True)
  for name, what in (("hf", "HF directory (bert, gpt2, llama, mistral, qwen2, gemma)"),
                     ("hf-bert", "HF BERT directory")):
    hf = commands.add_parser(name, help=f"{what} -> pretrained workdir")
    hf.add_argument("--src", required=True, help="dir with config.json + model.safetensors")
    hf.add_argument("--workdir", required=True, help="output workdir")
    hf.add_argument("--debug", action="store_true", help="show tracebacks")
  out = commands.add_parser(
      "export-hf", help="fine-tuned decoder run -> HF *ForCausalLM dir (or PEFT adapter); "
      "text classifier run -> HF BertForSequenceClassification dir")
  out.add_argument("--workdir", required=True,
                   help="the run (gpt: causal_lm / sft; bert: text_classification)")
  out.add_argument("--out", required=True, help="output directory (created)")
  out.add_argument("--checkpoint", default="latest", help="latest (default), best or a step")
  out.add_argument("--adapter-only", action="store_true",
                   help="decoder LoRA runs: the adapters alone, in HF PEFT format")
  out.add_argument("--max-shard-size", default="2GB",
                   help="decoders: weights above this go to several files + index (2GB)")
  out.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="decoders: tensor dtype (float32)")
  out.add_argument("--base-model", default=None,
                   help="--adapter-only: base_model_name_or_path (default: the imported "
                   "model's _name_or_path, else the run's init workdir)")
  out.add_argument("--debug", action="store_true", help="show tracebacks")
  vision = commands.add_parser(
      "vision", help="torchvision / timm ResNet, timm / HF ViT safetensors -> pretrained workdir")
  vision.add_argument("--src", required=True,
                      help="directory with model.safetensors (+ config.json) or a .safetensors")
  vision.add_argument("--workdir", required=True, help="output workdir")
  vision.add_argument("--arch", default=None, help="resnet | vit | hf_vit | resnet50 | "
                      "vit_base_patch16_224 ... (default: from the tensor names)")
  vision.add_argument("--image-size", type=int, default=None,
                      help="ViT: fine-tuning resolution (position embeddings resampled)")
  vision.add_argument("--debug", action="store_true", help="show tracebacks")
  args = parser.parse_args(argv)
  from absl import logging as absl_logging  # Orbax's notices would break the one-line errors

  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    _refuse_remote(args)
    {"hf": _hf, "hf-bert": _hf_bert, "export-hf": _export_hf,
     "vision": _vision}[args.command](args)
  except (UserError, NotImplementedError) as e:
    if args.debug:
      raise
    print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
    return 2 if isinstance(e, UserError) else 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
