"""`python -m ptft_jax.compare RUN [stage ...]`: the strategy comparison (train/reports.py)."""

import sys

from ptft_jax.train.reports import main

if __name__ == "__main__":
  sys.exit(main(sys.argv))
