"""configs/resnet.py:imagenet_frozen offline: a random-init ResNet-50 as the "ImageNet" workdir.

The pretrained workdir is what `python -m ptft_jax.convert vision` writes (params + BatchNorm
statistics, model_config.json, a hand-written preprocessing.json with unusual mean/std,
resize 36 -> crop 32, bicubic); the data is the digits written as a 32x32 PNG folder (train
and test; validation held out). The two stages train, evaluate and predict class names,
and the preprocessing is the one the weights asked for everywhere.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from ptft_jax import tasks, train
from ptft_jax.data import pipeline
from ptft_jax.data.builders.digits_folder import write_digits_folder
from ptft_jax.errors import DataError
from ptft_jax.inference import evaluate, predict
from ptft_jax.inference import predictor as inference
from ptft_jax.models import build_backbone
from ptft_jax.train import checkpoint, preemption
from tests.helpers import flat, load_config

pytestmark = pytest.mark.usefixtures("compile_cache", "fast_prng_compile")

PREP = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "resize": 36, "crop": 32,
        "interpolation": "bicubic"}
MODEL = dict(name="resnet", depth=50, width=4, small_input=False, stage_sizes=[1, 1, 1, 1],
             batch_norm="auto", dtype="float32")


def _random_import(workdir: str) -> None:
  """A random ResNet-50 (width 4, a block per stage) saved as a vision import would be.

  Shapes from `jax.eval_shape` (no compile), values from numpy: He-normal kernels, unit
  BatchNorm scales, and running statistics that are not 0 / 1.
  """
  backbone = build_backbone(ml_collections.ConfigDict(MODEL))
  shapes = jax.eval_shape(lambda: backbone.init(
      jax.random.PRNGKey(0), {"image": jnp.zeros((1, 32, 32, 3))}, train=False))
  rng = np.random.default_rng(0)

  def value(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      return rng.normal(0, np.sqrt(2 / (np.prod(shape[:-2]) * shape[-1])), shape)
    return {"scale": np.ones(shape), "bias": np.zeros(shape), "mean": rng.normal(0, 0.1, shape),
            "var": rng.uniform(0.8, 1.2, shape)}[name]

  v = jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(value(p, x), np.float32), shapes)
  checkpoint.save_pretrained(workdir, {"backbone": v["params"], "heads": {}},
                             model_state={"batch_stats": {"backbone": v["batch_stats"]}},
                             config=MODEL)
  for name, record in (("model_config.json", MODEL), ("preprocessing.json", PREP)):
    with open(os.path.join(workdir, name), "w") as f:
      json.dump(record, f)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(image folder, pretrained workdir): digits PNGs and a random ResNet-50 saved as an import."""
  root = str(tmp_path_factory.mktemp("digits_folder"))
  write_digits_folder(root, size=32, per_class=6, splits=("train", "test"))
  init = str(tmp_path_factory.mktemp("r50_imagenet"))
  _random_import(init)
  return root, init


def _config(setup, arg=""):
  root, init = setup
  c = load_config("resnet", f"imagenet_frozen,tiny,init={init},data={root}{arg}")
  for stage in (c.stages.values() if "stages" in c else [c]):
    stage.train.tensorboard, stage.train.checkpoint_every = False, stage.train.steps
  return c


def _manual_probabilities(run, paths):
  """The run's softmax on files decoded and normalized by hand (Pillow + numpy)."""
  rows = []
  for path in paths:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    new = (36, int(36 * h / w)) if w <= h else (int(36 * w / h), 36)
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = round((new[0] - 32) / 2), round((new[1] - 32) / 2)
    rows.append(np.asarray(image.crop((left, top, left + 32, top + 32)), np.float32) / 255)
  x = (np.stack(rows) - np.array(PREP["mean"])) / np.array(PREP["std"])
  return _softmax(run, x)


def _softmax(run, images):
  apply = jax.jit(lambda v, x: jax.nn.softmax(run.model.apply(
      v, {"image": x}, train=False, heads=("classifier",))["classifier"], -1))
  return np.asarray(apply(run.variables, jnp.asarray(images, jnp.float32)))


def test_two_stages_train_evaluate_and_predict_with_the_weights_preprocessing(setup, tmp_path):
  root, init = setup
  workdir = str(tmp_path / "run")
  results = train.run(_config(setup, ",unfreeze_top=1"), workdir)
  assert set(results["stages"]) == {"frozen", "top"}
  for stage in ("frozen", "top"):
    with open(os.path.join(workdir, stage, "preprocessing.json")) as f:
      record = json.load(f)
    assert {k: record[k] for k in PREP} == PREP
    with open(os.path.join(workdir, stage, "labels.json")) as f:
      labels = json.load(f)
    assert labels["label_names"] == [str(i) for i in range(10)]
    assert labels["image_shape"] == [32, 32, 3] and labels["preprocessing"] == PREP
    assert os.path.isfile(os.path.join(workdir, stage, "eval_test.json"))

  # Stage 1: backbone and BatchNorm statistics exactly the import's; stage 2: only stage4's
  # convolutions (and the head) moved, its BatchNorms stayed on the imported averages.
  imported = flat(checkpoint.load_params(init)[0])
  frozen = flat(checkpoint.load_params(os.path.join(workdir, "frozen"))[0])
  top = flat(checkpoint.load_params(os.path.join(workdir, "top"))[0])
  for k, v in imported.items():
    np.testing.assert_array_equal(frozen[k], v, err_msg=k)
  moved = sorted(k for k in top if not np.array_equal(top[k], frozen[k]))
  assert all(("stage4_" in k and "conv" in k) or "/heads/" in k for k in moved), moved
  assert any("stage4_" in k for k in moved) and any("/heads/" in k for k in moved)

  # predict speaks in class names and applies the preprocessing as evaluation does
  run_dir = os.path.join(workdir, "top")
  out = str(tmp_path / "p.jsonl")
  assert predict.main(["--workdir", run_dir, "--input", os.path.join(root, "test", "3"),
                       "--output", out]) == 0
  with open(out) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 6 and all(r["label"] in labels["label_names"] for r in rows)
  run = inference.load_run(run_dir)
  paths = [os.path.join(root, "test", "3", r["id"]) for r in rows]
  manual = _manual_probabilities(run, paths)
  got = np.array([[r["probabilities"][n] for n in labels["label_names"]] for r in rows])
  np.testing.assert_allclose(got, manual, atol=2e-6)
  # (the check has teeth: without the mean/std the outputs differ)
  raw = _softmax(run, np.stack([predict.load_image(p, (32, 32, 3), run.info.preprocessing)
                                 for p in paths]))
  assert np.abs(raw - manual).max() > 1e-4

  # --mode=eval without the pretrained workdir: the run's own record is enough
  shutil.move(init, init + ".moved")
  try:
    result, _ = evaluate.evaluate_checkpoint(run_dir, "test")
  finally:
    shutil.move(init + ".moved", init)
  test_paths, test_labels = [], []
  for label in range(10):
    folder = os.path.join(root, "test", str(label))
    for name in sorted(os.listdir(folder)):
      test_paths.append(os.path.join(folder, name))
      test_labels.append(label)
  p = _manual_probabilities(run, test_paths)
  loss = float(np.mean(-np.log(p[np.arange(len(p)), test_labels])))
  assert result["loss"] == pytest.approx(loss, rel=1e-5)
  assert result["accuracy"] == pytest.approx(np.mean(p.argmax(-1) == test_labels))


def test_a_run_on_a_streamed_folder_with_a_bad_image_resumes_exactly(setup, tmp_path,
                                                                     monkeypatch):
  monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 0)  # the Grain DataLoader path
  root = str(tmp_path / "digits")
  shutil.copytree(setup[0], root)
  bad = os.path.join(root, "train", "7", sorted(os.listdir(os.path.join(root, "train", "7")))[0])
  with open(bad, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # truncated after the signature
  init = setup[1]

  def config():
    c = load_config("resnet", f"imagenet_frozen,tiny,init={init},data={root},bad_images=skip,"
                    "steps=6")
    c.train.tensorboard, c.train.checkpoint_every, c.train.eval_every = False, 2, 0
    c.eval_splits = ("validation",)
    return c

  straight = train.train_and_evaluate(config(), str(tmp_path / "straight"))
  real, count = tasks.model_batch, [0]

  def model_batch(task, batch):
    count[0] += "valid" not in batch  # train batches only
    if count[0] == 4:
      preemption.request()  # served before step 5
    return real(task, batch)

  with monkeypatch.context() as m:
    m.setattr(tasks, "model_batch", model_batch)
    with pytest.raises(preemption.Preempted, match="saved step 4"):
      train.train_and_evaluate(config(), str(tmp_path / "resumed"))
  resumed = train.train_and_evaluate(config(), str(tmp_path / "resumed"))
  assert resumed == straight
  a = flat(checkpoint.load_params(str(tmp_path / "straight"))[0])
  b = flat(checkpoint.load_params(str(tmp_path / "resumed"))[0])
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_corrupt_image_read_by_a_grain_worker_is_one_line(setup, tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 0)
  root = str(tmp_path / "digits")
  shutil.copytree(setup[0], root, ignore=shutil.ignore_patterns("test"))
  bad = os.path.join(root, "train", "2", sorted(os.listdir(os.path.join(root, "train", "2")))[1])
  with open(bad, "r+b") as f:
    f.truncate(120)
  from ptft_jax import data

  config = load_config("resnet", f"imagenet_frozen,tiny,init={setup[1]},data={root},workers=2")
  bundle = data.make_data(config.data, 0, preprocessing=data.resolve_preprocessing(config))
  with pytest.raises(DataError) as e:
    for _ in range(20):
      next(bundle.train_iterator)
  assert str(e.value).startswith(f"{bad}: cannot decode the image (")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["empty_class", "corrupt_image", "stray_file",
                                  "bad_preprocessing", "no_train"])
def test_bad_folder_through_the_cli_is_one_line_and_status_2(setup, tmp_path, capsys, case):
  from tests.e2e.test_bad_input import run_main

  root, init = str(tmp_path / "digits"), str(tmp_path / "init")
  shutil.copytree(setup[0], root, ignore=shutil.ignore_patterns("test"))
  shutil.copytree(setup[1], init)
  first = os.path.join(root, "train", "4", sorted(os.listdir(os.path.join(root, "train", "4")))[0])
  named = {"empty_class": os.path.join(root, "train", "x"), "corrupt_image": first,
           "stray_file": os.path.join(root, "train", "4", "notes.txt"),
           "bad_preprocessing": os.path.join(init, "preprocessing.json"),
           "no_train": f"{root}: no train/ folder"}[case]
  if case == "empty_class":
    os.makedirs(named)
  elif case == "corrupt_image":
    with open(first, "r+b") as f:
      f.truncate(100)
  elif case == "stray_file":
    with open(named, "w") as f:
      f.write("n/a")
  elif case == "bad_preprocessing":
    with open(named, "w") as f:
      json.dump({**PREP, "std": [0.2, 0.2]}, f)
  else:
    shutil.move(os.path.join(root, "train"), os.path.join(root, "training"))
  status = run_main([f"--config=configs/resnet.py:imagenet_frozen,tiny,init={init},data={root}",
                     f"--workdir={tmp_path / 'run'}"])
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert status == 2 and len(err) == 1, err
  assert err[0].startswith(f"error: {named}"), err[0]
