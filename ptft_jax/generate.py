"""`python -m ptft_jax.generate --workdir=RUN --prompt TEXT --max-new-tokens N`."""

import sys

from ptft_jax.inference.generate import main

if __name__ == "__main__":
  sys.exit(main())
