"""Shared test setup: 8 simulated CPU devices, a private data dir, small helpers."""

import os

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
