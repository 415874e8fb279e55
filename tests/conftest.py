"""Shared test setup: 8 simulated CPU devices, a private data dir and XLA compilation cache.

Plain helpers (configs by name, tiny configs, flat trees) live in tests/helpers.py.
Tiers: tests/unit (pure functions and one-step models; `pytest -q -n 2 tests/unit`, under
a minute) and tests/e2e (whole runs, the CLI, kills, several processes).

The README's test commands run two pytest-xdist workers (`-n 2`): most of the suite's time
is XLA compiling programs that occur once, on one thread, so two processes keep both cores of
the reference machine busy. Without `-n`, the tests run in this one process.
"""

import os

# Must be set before jax is imported anywhere in the test session (the CLI processes the
# tests start inherit it). 8 simulated devices; and XLA:CPU's code generation at LLVM's -O0:
# the suite is compile-bound (tiny models, programs compiled once), and this cut it from 327
# to 261 s. Results are the same up to float32 summation order; docs' and the bench's
# figures come from the default level.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


def _session_shared_dir(tmp_path_factory, name: str):
  """A directory all xdist workers of this session share (this process's own without xdist)."""
  if "PYTEST_XDIST_WORKER" not in os.environ:
    return tmp_path_factory.mktemp(name)
  path = tmp_path_factory.getbasetemp().parent / name  # the workers' common parent
  path.mkdir(exist_ok=True)
  return path


@pytest.fixture(scope="session", autouse=True)
def _data_dir(tmp_path_factory):
  """Every test prepares the embedded datasets into one private directory.

  xdist workers share it: `ptft_jax.data.embedded.prepare` holds a file lock per dataset, so
  one worker prepares and the other waits, then reads.
  """
  path = (os.environ.get("PTFT_TEST_DATA_DIR")
          or str(_session_shared_dir(tmp_path_factory, "datasets")))
  old = os.environ.get("PTFT_DATA_DIR")
  os.environ["PTFT_DATA_DIR"] = path
  yield path
  if old is None:
    os.environ.pop("PTFT_DATA_DIR", None)
  else:
    os.environ["PTFT_DATA_DIR"] = old


_CACHE_KEYS = {"jax_compilation_cache_dir": "JAX_COMPILATION_CACHE_DIR",
               "jax_persistent_cache_min_compile_time_secs":
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
               "jax_persistent_cache_min_entry_size_bytes":
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"}


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
  """One XLA persistent compilation cache for the whole session, in a pytest tmp dir.

  Tests and the CLI processes they start (which inherit the environment) compile the
  same small programs again and again: the digits step, `all_finite`, orbax's slices.
  Every program is cached (no minimum compile time or size); xdist workers share the
  cache, so a program compiled in one is read by the other. No size limit: with one, JAX
  locks the directory and lists every entry at each write, which made the suite 100 s
  slower. Without the lock, a worker reading an entry the other is still writing gets an
  error that JAX turns into a warning and a compile. Tests that count
  compilations count the "Compiling" lines logged before the cache is looked up, and
  tests/unit/test_stages.py sets its own directory, so neither is fooled by it. Nothing
  goes to ~/.cache.
  """
  from jax.experimental.compilation_cache import compilation_cache

  path = str(_session_shared_dir(tmp_path_factory, "xla_cache"))
  old_config = {k: getattr(jax.config, k) for k in _CACHE_KEYS}
  old_env = {v: os.environ.get(v) for v in _CACHE_KEYS.values()}
  for (key, env), value in zip(_CACHE_KEYS.items(), (path, 0, 0), strict=True):
    jax.config.update(key, value)
    os.environ[env] = str(value)
  compilation_cache.reset_cache()
  yield path
  for key, value in old_config.items():
    jax.config.update(key, value)
  for env, value in old_env.items():
    if value is None:
      os.environ.pop(env, None)
    else:
      os.environ[env] = value
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def fast_prng_compile():
  """Non-partitionable threefry: XLA:CPU compiles parameter init ~5x faster.

  Only the random values differ; use it where nothing depends on them
  (`pytestmark = pytest.mark.usefixtures("fast_prng_compile")`).
  """
  with jax.threefry_partitionable(False):
    yield
