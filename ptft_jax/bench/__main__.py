"""`python -m ptft_jax.bench --help`."""

import sys

from ptft_jax.bench.benchmark import main

if __name__ == "__main__":
  sys.exit(main())
