"""Staged runs share XLA's persistent compilation cache in <workdir>/xla_cache."""

import jax

from ptft_jax.train import stages


def test_stages_use_a_cache_in_the_workdir_unless_one_is_configured(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  try:
    with stages._compilation_cache(str(tmp_path / "xla_cache")):
      assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla_cache")
      jax.jit(lambda x: x * 3 + 1)(jax.numpy.arange(7.0)).block_until_ready()
    assert jax.config.jax_compilation_cache_dir is None  # restored
    assert any((tmp_path / "xla_cache").iterdir())  # the program was written there
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    with stages._compilation_cache(str(tmp_path / "other")):  # the user's cache wins
      assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
