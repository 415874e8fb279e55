"""CLI: `python -m ptft_jax.convert hf-bert --src DIR --workdir OUT [--debug]`.

Reads a HF BERT directory (config.json, model.safetensors, vocab.txt), checks
it strictly and writes a pretrained workdir (backbone + any MLM/NSP heads, and
vocab.txt). User mistakes print one line and exit with status 2.
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
