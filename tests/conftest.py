"""Shared test setup: 8 simulated CPU devices, a private data dir, opt-in speed fixtures.

Plain helpers (configs by name, tiny configs, flat trees) live in tests/helpers.py.
Tiers: tests/unit (pure functions and one-step models; `pytest -q tests/unit`, about a
minute) and tests/e2e (whole runs, the CLI, kills, several processes).
"""

import os

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _data_dir(tmp_path_factory):
  """Every test prepares the embedded datasets into one private directory."""
  path = os.environ.get("PTFT_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("datasets"))
  old = os.environ.get("PTFT_DATA_DIR")
  os.environ["PTFT_DATA_DIR"] = path
  yield path
  if old is None:
    os.environ.pop("PTFT_DATA_DIR", None)
  else:
    os.environ["PTFT_DATA_DIR"] = old


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """XLA's persistent cache for a module whose runs re-jit the same few programs.

  Use with `pytestmark = pytest.mark.usefixtures("compile_cache")`.
  """
  from jax.experimental.compilation_cache import compilation_cache

  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")
  old = {k: getattr(jax.config, k) for k in keys}
  for k, v in zip(keys, (str(tmp_path_factory.mktemp("xla_cache")), 0, 0), strict=True):
    jax.config.update(k, v)
  compilation_cache.reset_cache()
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def fast_prng_compile():
  """Non-partitionable threefry: XLA:CPU compiles parameter init ~5x faster.

  Only the random values differ; use it where nothing depends on them
  (`pytestmark = pytest.mark.usefixtures("fast_prng_compile")`).
  """
  with jax.threefry_partitionable(False):
    yield
