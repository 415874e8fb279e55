"""`python -m ptft_jax.predict --workdir=RUN --output=OUT.jsonl INPUT ...`."""

import sys

from ptft_jax.inference.predict import main

if __name__ == "__main__":
  sys.exit(main())
