"""One process of test_multihost_load.py: load a model sharded over 2 processes x 4 devices.

  python tests/e2e/sharded_load_child.py PORT PROCESS_ID HF_DIR WORKDIR OUT_JSON

Joins a 2-process jax.distributed run on localhost (4 CPU devices each), loads the
Hugging Face directory and the pretrained workdir with `ptft_jax.load_params` on an
fsdp=8 mesh over all 8 devices, and writes for each load: the bytes this process's
devices hold and every addressable shard's index and values (as lists), so the test can
check them against the whole arrays.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

port, process_id, hf_dir, workdir, out = sys.argv[1:]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=int(process_id))

import numpy as np  # noqa: E402

import ptft_jax as pj  # noqa: E402
from ptft_jax.parallel import sharding  # noqa: E402


def shards(tree) -> dict:
  """{path: [[index as [start, stop] per axis, values], ...]} of this process's shards."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    rows = []
    for shard in leaf.addressable_shards:
      index = [[s.start or 0, s.stop if s.stop is not None else dim]
               for s, dim in zip(shard.index, leaf.shape, strict=False)]
      rows.append([index, np.asarray(shard.data).tolist()])
    out[name] = {"shape": list(leaf.shape), "shards": rows,
                 "global": isinstance(leaf, jax.Array) and not leaf.is_fully_addressable}
  return out


mesh = sharding.make_mesh({"fsdp": 8})
report = {"devices": len(jax.devices()), "local": len(jax.local_devices())}
for name, path in (("hf", hf_dir), ("workdir", workdir)):
  _, params = pj.load_params(path, mesh=mesh)
  held = sum(s.data.nbytes for leaf in jax.tree_util.tree_leaves(params)
             for s in leaf.addressable_shards)
  report[name] = {"held_bytes": held, "params": shards(params)}
with open(out, "w") as f:
  json.dump(report, f)
jax.distributed.shutdown()
