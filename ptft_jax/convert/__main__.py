"""CLI: `python -m ptft_jax.convert hf-bert --src DIR --workdir OUT [--debug]`.

Reads a HF BERT directory (config.json, model.safetensors, vocab.txt), checks
it strictly and writes a pretrained workdir (backbone + any MLM/NSP heads, and
vocab.txt). User mistakes print one line and exit with status 2.
"""

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

from ptft_jax.errors import UserError


def _hf_bert(args: argparse.Namespace) -> None:
  from ptft_jax.convert import hf_bert, workdir  # Lazy: keeps `--help` fast.

  config, backbone = hf_bert.load_hf_bert(args.src)
  heads = hf_bert.load_hf_bert_heads(args.src)
  workdir.write_pretrained_workdir(config, {"backbone": backbone, "heads": heads}, args.workdir)
  vocab = os.path.join(args.src, hf_bert.VOCAB_FILE)
  if os.path.isfile(vocab):
    shutil.copyfile(vocab, os.path.join(args.workdir, hf_bert.VOCAB_FILE))
  heads_note = f" + heads {sorted(heads)}" if heads else ""
  print(f"converted {args.src} ({config.num_layers} layers, hidden {config.hidden_size})"
        f"{heads_note} -> {args.workdir}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ptft_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--debug", action="store_true", help="show tracebacks")
  commands = parser.add_subparsers(dest="command", required=True)
  hf = commands.add_parser("hf-bert", help="HF BERT directory -> pretrained workdir")
  hf.add_argument("--src", required=True, help="dir with config.json + model.safetensors")
  hf.add_argument("--workdir", required=True, help="output workdir")
  hf.add_argument("--debug", action="store_true", help="show tracebacks")
  args = parser.parse_args(argv)
  try:
    {"hf-bert": _hf_bert}[args.command](args)
  except (UserError, NotImplementedError) as e:
    if args.debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    return 2 if isinstance(e, UserError) else 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
