"""Sharded loading on 2 processes x 4 devices: each process holds only its devices' slices.

`ptft_jax.load_params` of a Hugging Face directory (memory-mapped safetensors, each
device's slice read inside `jax.make_array_from_callback`) and of a pretrained workdir
(Orbax restore into the target shardings), on an fsdp=8 mesh spanning two local
processes (jax.distributed on localhost). Each process's devices hold 4/8 of the model
(+ the replicated 1-D leaves), and every shard equals its slice of the whole array.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.e2e.test_sharded_load import bert  # noqa: F401 -- the module's fixture
from tests.helpers import REPO, flat

CHILD = os.path.join(REPO, "tests", "e2e", "sharded_load_child.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def reports(bert, tmp_path_factory):  # noqa: F811
  _, hf_dir, imported = bert
  out = tmp_path_factory.mktemp("multihost_load")
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen(
      [sys.executable, CHILD, str(port), str(i), hf_dir, imported, str(out / f"{i}.json")],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  return [json.load(open(out / f"{i}.json")) for i in range(2)]


@pytest.mark.parametrize("source", ["hf", "workdir"])
def test_each_process_holds_and_reads_only_its_slices(bert, reports, source):  # noqa: F811
  params, _, _ = bert
  want = {k.removeprefix("backbone/"): v for k, v in flat({"backbone": params}).items()}
  total = sum(v.nbytes for v in want.values())
  assert [r["devices"] for r in reports] == [8, 8] and [r["local"] for r in reports] == [4, 4]
  for report in reports:
    got = report[source]
    # Half the devices: half the sharded bytes, plus the replicated 1-D leaves (< 1%).
    assert got["held_bytes"] <= 1.1 * total / 2, (got["held_bytes"], total)
    names = {k.removeprefix("backbone/") for k in got["params"]}
    assert names == set(want), sorted(names ^ set(want))[:5]
    for name, leaf in got["params"].items():
      whole = want[name.removeprefix("backbone/")]
      assert leaf["shape"] == list(whole.shape)
      assert len(leaf["shards"]) == 4  # one per local device
      for index, values in leaf["shards"]:
        expected = whole[tuple(slice(a, b) for a, b in index)]
        np.testing.assert_array_equal(np.asarray(values, np.float32), expected, err_msg=name)
  sharded = [n for n, leaf in reports[0][source]["params"].items() if leaf["global"]]
  assert len(sharded) > len(want) // 2  # the 2-D kernels and embeddings span both processes
  assert jax.device_count() == 8  # this process's own devices are untouched by the children
