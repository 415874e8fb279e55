"""TFDS builders for datasets embedded in ptft_jax (prepared offline)."""
