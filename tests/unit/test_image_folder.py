"""Image folders (`config.data.source = "folder"`) and the preprocessing record.

Folders are written here with Pillow: a few tiny images per class, so every test
lists, decodes and batches real files in well under a second.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from ptft_jax import data, tasks
from ptft_jax.data import image_folder, labels_json, pipeline, preprocessing
from ptft_jax.data.preprocessing import Preprocessing
from ptft_jax.errors import ConfigError, DataError
from ptft_jax.inference import predict

PREP = Preprocessing(resize=12, crop=8)


def _image(seed: int, size=(10, 14), mode: str = "RGB") -> Image.Image:
  """A random RGB image converted to `mode` (size is (width, height))."""
  rng = np.random.default_rng(seed)
  rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
  if mode == "P":
    return rgb.convert("P", palette=Image.Palette.ADAPTIVE)
  if mode == "I;16":
    return Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
  return rgb.convert(mode)


def _write(path, image: Image.Image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path)


def _folder(root, classes=("cat", "dog"), per_class=6, splits=("train",), suffix=".png"):
  """root/<split>/<class>/<i>.png: random 10x14 RGB images, distinct everywhere."""
  for s, split in enumerate(splits):
    for c, name in enumerate(classes):
      for i in range(per_class):
        _write(os.path.join(root, split, name, f"{i:02d}{suffix}"),
               _image(1000 * s + 100 * c + i))
  return str(root)


def _config(root, **overrides) -> ml_collections.ConfigDict:
  dc = image_folder.folder_config(str(root), batch_size=8, eval_batch_size=8, crop=8, resize=12)
  for key, value in overrides.items():
    dc[key] = value
  return dc


def _bundle(root, prep=PREP, seed=0, **overrides):
  return data.make_data(_config(root, **overrides), seed, preprocessing=prep)


def _all_rows(bundle, split):
  images, labels = [], []
  for batch in bundle.eval_batches(split):
    images.append(batch["image"][batch["valid"]])
    labels.append(batch["label"][batch["valid"]])
  return np.concatenate(images), np.concatenate(labels)


# --- layout, decoding ----------------------------------------------------------------------


def test_classes_are_the_sorted_folder_names_and_batches_have_the_crop(tmp_path):
  root = _folder(tmp_path, classes=("zebra", "ant", "moose"), splits=("train", "validation"))
  bundle = _bundle(root)
  assert bundle.info.label_names == ["ant", "moose", "zebra"]
  assert bundle.info.image_shape == (8, 8, 3) and bundle.info.num_classes == 3
  batch = next(bundle.train_iterator)
  assert batch["image"].shape == (8, 8, 8, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and 0 <= batch["image"].min() <= batch["image"].max() <= 1
  images, labels = _all_rows(bundle, "validation")
  assert sorted(labels.tolist()) == [0] * 6 + [1] * 6 + [2] * 6
  # validation/ant/00.png is the first image of the ordered pass
  want = image_folder.decode_image(os.path.join(root, "validation", "ant", "00.png"), 12, 8)
  np.testing.assert_array_equal(images[0], want.astype(np.float32) / 255)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(10, 14), (31, 17), (8, 8)])
def test_decode_is_resize_shorter_side_then_centre_crop(tmp_path, size, interpolation):
  path = str(tmp_path / "x.png")
  _image(3, size).save(path)
  resize, crop = 12, 8
  w, h = size
  new = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
  filt = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
  resized = Image.open(path).convert("RGB").resize(new, filt[interpolation])
  left, top = round((new[0] - crop) / 2), round((new[1] - crop) / 2)
  want = np.asarray(resized.crop((left, top, left + crop, top + crop)))
  got = image_folder.decode_image(path, resize, crop, interpolation)
  np.testing.assert_array_equal(got, want)


def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
  from PIL import JpegImagePlugin

  path = str(tmp_path / "big.jpg")
  x = np.linspace(0, 255, 800)
  smooth = np.stack([np.add.outer(x[:600] * 0.5, x * 0.5), np.tile(x, (600, 1)),
                     np.tile(x[:600, None], (1, 800))], -1)
  Image.fromarray(smooth.astype(np.uint8)).save(path, quality=95)
  sizes, real = [], JpegImagePlugin.JpegImageFile.draft

  def draft(self, mode, size):
    out = real(self, mode, size)
    sizes.append(self.size)
    return out

  monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
  got = image_folder.decode_image(path, 64, 56)
  assert sizes == [(100, 75)]  # 1/8 scale: still at least the 85 x 64 the resize needs
  full = Image.open(path).convert("RGB").resize((85, 64), Image.Resampling.BILINEAR)
  want = np.asarray(full.crop((14, 4, 70, 60)), np.float32)
  assert np.abs(got.astype(np.float32) - want).mean() < 3  # the same picture


def test_mixed_modes_are_converted_to_rgb_and_counted_once(tmp_path, capsys):
  root = _folder(tmp_path)
  for i, mode in enumerate(["L", "L", "RGBA", "CMYK", "P", "I;16"]):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    _write(os.path.join(root, "train", "cat", f"m{i}{suffix}"), _image(50 + i, mode=mode))
  bundle = _bundle(root)
  out = capsys.readouterr().out
  lines = [ln for ln in out.splitlines() if "converted to RGB" in ln]
  assert len(lines) == 1, out
  assert lines[0].endswith("train: 16 images of 2 classes; converted to RGB: 2 grayscale (L), "
                           "1 CMYK, 1 16-bit grayscale (I;16), 1 palette (P), 1 RGBA")
  images, _ = _all_rows(bundle, "validation")
  assert images.shape[1:] == (8, 8, 3)
  gray = image_folder.decode_image(os.path.join(root, "train", "cat", "m0.png"), 12, 8)
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  wide = image_folder.decode_image(os.path.join(root, "train", "cat", "m5.png"), 12, 8)
  assert wide.max() > 128  # 16-bit values scaled to 8 bits, not clipped to white


# --- bad input -----------------------------------------------------------------------------


def _truncate(path):
  with open(path, "rb") as f:
    head = f.read()
  with open(path, "wb") as f:
    f.write(head[: len(head) // 2])


def _corrupt_folder(tmp_path):
  root = _folder(tmp_path, per_class=6)
  bad = os.path.join(root, "train", "dog", "03.png")
  _truncate(bad)
  return root, bad


def test_corrupt_image_stops_naming_the_file(tmp_path):
  root, bad = _corrupt_folder(tmp_path)
  with pytest.raises(DataError) as e:
    _bundle(root)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"{bad}: cannot decode the image")
  assert "config.data.bad_images='skip'" in msg


def test_corrupt_image_is_skipped_and_counted(tmp_path, capsys):
  root, bad = _corrupt_folder(tmp_path)
  bundle = _bundle(root, bad_images="skip", holdout=0.0)
  out = capsys.readouterr().out
  assert "image folder " in out and "skipped 1 bad file(s) (config.data.bad_images='skip'), " \
      f"first {bad}: cannot decode the image" in out
  assert bundle.info.splits == {"train": 11}


def test_streamed_split_skips_or_stops_where_it_decodes(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 0)  # never decoded up front
  root, bad = _corrupt_folder(tmp_path)
  bundle = _bundle(root, bad_images="skip", holdout=0.0)
  labels = np.concatenate([next(bundle.train_iterator)["label"] for _ in range(6)])
  assert len(labels) == 48  # batches stay full
  assert f"warning: skipped {bad}: cannot decode the image" in capsys.readouterr().err
  with pytest.raises(DataError, match=f"^{bad}: cannot decode the image"):
    for _ in range(6):
      next(_bundle(root, holdout=0.0).train_iterator)


def test_non_image_file_is_named_or_skipped(tmp_path, capsys):
  root = _folder(tmp_path)
  notes = os.path.join(root, "train", "cat", "notes.txt")
  with open(notes, "w") as f:
    f.write("not a picture")
  with open(os.path.join(root, "train", "cat", ".DS_Store"), "wb") as f:  # hidden: ignored
    f.write(b"\0\0\0\1Bud1")
  with pytest.raises(DataError) as e:
    _bundle(root)
  assert str(e.value).startswith(f"{notes}: not an image file (.txt); image folders hold only "
                                 ".jpg, .jpeg, .png files")
  assert _bundle(root, bad_images="skip").info.splits == {"train": 10, "validation": 2}
  assert "skipped 1 bad file(s)" in capsys.readouterr().out


def test_a_text_file_named_like_an_image_is_not_an_image(tmp_path):
  root = _folder(tmp_path)
  fake = os.path.join(root, "train", "dog", "fake.jpg")
  with open(fake, "w") as f:
    f.write("<html>404</html>")
  with pytest.raises(DataError, match=f"^{fake}: not an image Pillow can read"):
    _bundle(root)


def test_empty_class_folder(tmp_path):
  root = _folder(tmp_path)
  os.makedirs(os.path.join(root, "train", "emu"))
  with pytest.raises(DataError) as e:
    _bundle(root)
  assert str(e.value) == (f"{root}/train/emu: empty class folder (no .jpg, .jpeg, .png files); "
                          "add images or remove the folder")


def test_missing_folders_and_splits(tmp_path):
  with pytest.raises(DataError, match=r"config.data.root=.*/nowhere: no such folder"):
    _bundle(tmp_path / "nowhere")
  os.makedirs(tmp_path / "empty" / "validation")
  with pytest.raises(DataError) as e:
    _bundle(tmp_path / "empty")
  assert str(e.value) == (f"{tmp_path}/empty: no train/ folder (nor train.csv / train.jsonl); "
                          "found validation")
  bundle = _bundle(_folder(tmp_path / "f"))
  with pytest.raises(DataError, match=r"no test/ folder .* leave 'test' out of config.eval_splits"):
    next(bundle.eval_batches("test"))
  with pytest.raises(DataError, match="config.data.holdout=0"):
    next(_bundle(tmp_path / "f", holdout=0.0).eval_batches("validation"))
  with pytest.raises(ConfigError, match="config.data.bad_images='keep': choose 'stop' or 'skip'"):
    _bundle(tmp_path / "f", bad_images="keep")


def test_validation_class_that_train_lacks(tmp_path):
  root = _folder(tmp_path, splits=("train", "val"))
  _write(os.path.join(root, "val", "yak", "0.png"), _image(1))
  bundle = _bundle(root)  # val/ is the validation split
  with pytest.raises(DataError, match=r"val/yak: class 'yak' is not one of the train classes "
                                      r"\(cat, dog\)"):
    next(bundle.eval_batches("validation"))


def test_loose_file_beside_the_class_folders(tmp_path):
  root = _folder(tmp_path)
  _write(os.path.join(root, "train", "stray.png"), _image(9))
  with pytest.raises(DataError, match="train/stray.png: a file outside the class folders"):
    _bundle(root)


# --- index files -----------------------------------------------------------------------------


def test_csv_and_jsonl_indexes(tmp_path):
  root = _folder(tmp_path, classes=("a", "b"), per_class=4)
  rows = [(f"train/{c}/{i:02d}.png", str(label)) for label, c in ((10, "a"), (2, "b"))
          for i in range(4)]
  with open(os.path.join(root, "train.csv"), "w") as f:
    f.write("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
  with open(os.path.join(root, "validation.jsonl"), "w") as f:
    f.write("".join(json.dumps({"path": p, "label": int(lab)}) + "\n" for p, lab in rows[:3]))
  bundle = _bundle(root)
  assert bundle.info.label_names == ["2", "10"]  # integer labels sort as numbers
  assert bundle.info.splits == {"train": 8}
  _, labels = _all_rows(bundle, "validation")
  assert labels.tolist() == [1, 1, 1]


def test_index_errors_name_the_line(tmp_path):
  root = _folder(tmp_path, per_class=2)
  index = os.path.join(root, "train.csv")
  with open(index, "w") as f:
    f.write("train/cat/00.png,cat\ntrain/cat/gone.png,cat\n")
  with pytest.raises(DataError) as e:
    _bundle(root)
  assert str(e.value).startswith(f"{index}:2: no such image file 'train/cat/gone.png'")
  assert _bundle(root, bad_images="skip", holdout=0.0).info.splits["train"] == 1
  with open(index, "w") as f:
    f.write("train/cat/00.png,cat\n\ntrain/cat/01.png;cat\n")
  with pytest.raises(DataError, match=rf"^{index}:3: expected 'path,label', got 1 field"):
    _bundle(root)
  os.remove(index)
  with open(os.path.join(root, "train.jsonl"), "w") as f:
    f.write('{"path": "train/cat/00.png"}\n')
  with pytest.raises(DataError, match=r'train.jsonl:1: expected \{"path": "...", "label"'):
    _bundle(root)


# --- the held-out validation split, the train stream -------------------------------------------


def test_holdout_is_stratified_deterministic_and_disjoint():
  labels = np.repeat(np.arange(4), [10, 20, 3, 1])
  train, val = image_folder.holdout_split(labels, 0.2, seed=5)
  again = image_folder.holdout_split(labels, 0.2, seed=5)
  np.testing.assert_array_equal(val, again[1])
  assert np.bincount(labels[val], minlength=4).tolist() == [2, 4, 1, 0]
  assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
  other = image_folder.holdout_split(labels, 0.2, seed=6)[1]
  assert not np.array_equal(val, other)


def test_holdout_through_the_bundle_ignores_the_shuffle_seed(tmp_path):
  root = _folder(tmp_path, per_class=10)
  a, b = _bundle(root, seed=1), _bundle(root, seed=2)
  np.testing.assert_array_equal(_all_rows(a, "validation")[0], _all_rows(b, "validation")[0])
  assert a.info.splits == {"train": 18, "validation": 2}
  first_a, first_b = next(a.train_iterator)["image"], next(b.train_iterator)["image"]
  assert not np.array_equal(first_a, first_b)  # a different shuffle of the same 18


@pytest.mark.parametrize("streamed", [False, True])
def test_train_stream_resumes_exactly(tmp_path, monkeypatch, streamed):
  if streamed:  # the Grain DataLoader path, with a skipped file in it
    monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 0)
  root, _ = _corrupt_folder(tmp_path / "f")
  it = _bundle(root, seed=3, bad_images="skip").train_iterator
  for _ in range(3):
    next(it)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(data=data.iterator_save_args(it)))
    mngr.wait_until_finished()
  expected = [next(it) for _ in range(4)]
  fresh = _bundle(root, seed=3, bad_images="skip").train_iterator
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(3, args=ocp.args.Composite(data=data.iterator_restore_args(fresh)))
  for want in expected:
    got = next(fresh)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])


def test_label_fraction_on_a_folder(tmp_path):
  root = _folder(tmp_path, per_class=10, splits=("train", "validation"))
  assert _bundle(root, label_fraction=0.5).info.splits == {"train": 10}
  bundle = _bundle(root, labels_per_class=2)
  labels = np.concatenate([next(bundle.train_iterator)["label"] for _ in range(4)])
  assert sorted(set(labels.tolist())) == [0, 1]


def test_digits_folder_writer(tmp_path):
  from ptft_jax.data.builders.digits_folder import write_digits_folder

  written = write_digits_folder(str(tmp_path), size=16, per_class=2, splits=("train", "test"))
  assert written == {"train": 20, "test": 20}
  bundle = _bundle(tmp_path, Preprocessing(resize=16, crop=16))
  assert bundle.info.label_names == [str(i) for i in range(10)]
  images, labels = _all_rows(bundle, "test")
  assert images.shape == (20, 16, 16, 3) and sorted(labels.tolist()) == sorted(list(range(10)) * 2)


# --- preprocessing -------------------------------------------------------------------------


def _pretrained(tmp_path, record) -> str:
  init = tmp_path / "init"
  os.makedirs(init, exist_ok=True)
  with open(init / preprocessing.PREPROCESSING_FILE, "w") as f:
    json.dump(record, f)
  return str(init)


def _run_config(init="", **prep) -> ml_collections.ConfigDict:
  c = data.image_folder.folder_config("unused")
  c = ml_collections.ConfigDict({"data": c, "init": {"pretrained_workdir": init}})
  c.data.preprocessing.update(prep)
  return c


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 256,
            "crop": 224, "interpolation": "bicubic"}


def test_preprocessing_comes_from_the_pretrained_workdir_unless_the_config_sets_it(tmp_path):
  init = _pretrained(tmp_path, IMAGENET)
  got = preprocessing.resolve(_run_config(init))
  assert (got.mean, got.std, got.resize, got.crop, got.interpolation) == (
      tuple(IMAGENET["mean"]), tuple(IMAGENET["std"]), 256, 224, "bicubic")
  assert got.origin == os.path.join(init, "preprocessing.json")
  crop = preprocessing.resolve(_run_config(init, crop=112))
  assert (crop.resize, crop.crop, crop.mean) == (128, 112, got.mean)  # resize scaled with it
  assert crop.origin.startswith("config.data.preprocessing over ")
  mine = preprocessing.resolve(_run_config(init, mean=(0.5,) * 3, std=(0.5,) * 3))
  assert mine.mean == (0.5,) * 3 and mine.crop == 224
  assert preprocessing.resolve(_run_config("")) == Preprocessing()


def test_a_run_keeps_its_own_record_when_the_pretrained_workdir_is_gone(tmp_path):
  init = _pretrained(tmp_path, IMAGENET)
  config, run = _run_config(init), str(tmp_path / "run")
  os.makedirs(run)
  preprocessing.write_preprocessing(run, config, preprocessing.resolve(config, run))
  os.remove(os.path.join(init, "preprocessing.json"))
  again = preprocessing.resolve(config, run)
  assert again.mean == tuple(IMAGENET["mean"]) and again.origin.startswith(run)
  # Another init (or other config values) make the old record stale: not used.
  assert preprocessing.resolve(_run_config(str(tmp_path)), run) == Preprocessing()


@pytest.mark.parametrize(("record", "message"), [
    ({**IMAGENET, "std": [0.2, 0.0, 0.2]}, "'std' must be > 0"),
    ({**IMAGENET, "mean": [0.5, 0.5]}, "'mean' has 2 values and 'std' 3"),
    ({**IMAGENET, "mean": "imagenet"}, "'mean' must be a list of numbers"),
    ({**IMAGENET, "crop": 300}, "'crop' 300 is larger than 'resize' 256"),
    ({**IMAGENET, "resize": 2.5}, "'resize' must be a positive integer"),
    ({**IMAGENET, "interpolation": "lanczos"}, "'interpolation' must be one of"),
    ({"mean": [0.5] * 3}, "give 'mean' and 'std' together"),
])
def test_bad_preprocessing_json_is_one_line_naming_the_file(tmp_path, record, message):
  init = _pretrained(tmp_path, record)
  with pytest.raises(DataError) as e:
    preprocessing.resolve(_run_config(init))
  assert str(e.value).startswith(os.path.join(init, "preprocessing.json") + ": ")
  assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_config_preprocessing(tmp_path):
  with pytest.raises(ConfigError, match="config.data.preprocessing: 'interpolation' must be"):
    preprocessing.resolve(_run_config(interpolation="nearest"))
  c = _run_config()
  c.data.preprocessing.scale = 2
  with pytest.raises(ConfigError, match=r"unknown key\(s\) \['scale'\]"):
    preprocessing.resolve(c)


def test_the_task_normalizes_in_training_evaluation_and_prediction(tmp_path):
  root = _folder(tmp_path)
  prep = Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), resize=12, crop=8)
  bundle = _bundle(root, prep)
  config = ml_collections.ConfigDict({"task": {"name": "classification",
                                               "augment": {"flip": True}}})
  task, _ = tasks.build_task(config, bundle.info, check_keys=False)
  assert task.normalize == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
  batch = next(bundle.eval_batches("validation"))
  want = (batch["image"] - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.5])
  evaluated = task.inputs(batch, jax.random.PRNGKey(0), False)["image"]
  np.testing.assert_allclose(evaluated, want, rtol=1e-5, atol=1e-6)
  trained = np.asarray(task.inputs(batch, jax.random.PRNGKey(1), True)["image"])
  flipped = want[:, :, ::-1]
  assert all(np.allclose(t, w, atol=1e-5) or np.allclose(t, f, atol=1e-5)
             for t, w, f in zip(trained, want, flipped, strict=True))
  # labels.json carries it; a rebuilt info builds the same task (what predict uses)
  record = labels_json.label_record(config, bundle.info)
  assert record["preprocessing"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5],
                                     "resize": 12, "crop": 8, "interpolation": "bilinear"}
  info = labels_json.info_from_record(json.loads(json.dumps(record)))
  assert tasks.build_task(config, info, check_keys=False)[0].normalize == task.normalize
  # predict decodes a file exactly as evaluation did
  path = os.path.join(root, "train", "cat", "00.png")
  np.testing.assert_array_equal(
      predict.load_image(path, (8, 8, 3), info.preprocessing),
      image_folder.decode_image(path, 12, 8).astype(np.float32) / 255)


def test_tfds_data_gets_the_normalization_only(tmp_path):
  c = ml_collections.ConfigDict({"dataset": "digits", "data_dir": "", "batch_size": 8,
                                 "eval_batch_size": 8})
  three = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, resize=256, crop=224, origin="x.json")
  with pytest.raises(ConfigError, match="x.json: 3 mean / std values, but dataset 'digits' "
                                        r"has 1 channel\(s\)"):
    data.make_data(c, 0, preprocessing=three)
  one = Preprocessing(mean=(0.5,), std=(0.25,), resize=256, crop=224)
  info = data.make_data(c, 0, preprocessing=one).info
  assert info.image_shape == (8, 8, 1)
  assert info.preprocessing.record() == {"mean": [0.5], "std": [0.25],
                                         "interpolation": "bilinear"}


# --- configs/resnet.py:imagenet_frozen ---------------------------------------------------------


def test_imagenet_frozen_config(tmp_path):
  from tests.helpers import load_config

  root = _folder(tmp_path / "flowers", splits=("train", "val"))
  init = tmp_path / "r50"
  os.makedirs(init)
  with open(init / "model_config.json", "w") as f:
    json.dump({"name": "resnet", "depth": 50, "width": 64, "padding": "symmetric"}, f)
  c = load_config("resnet", f"imagenet_frozen,init={init},data={root}")
  assert "stages" not in c and c.data.source == "folder" and c.data.root == root
  assert c.model.padding == "symmetric" and c.model.batch_norm == "auto"
  assert c.task.head_hidden_sizes == (1024,) and c.optim.groups == [(r"backbone/.*",
                                                                      {"frozen": True})]
  assert c.init.pretrained_workdir == str(init) and c.eval_splits == ("validation",)
  staged = load_config("resnet", f"imagenet_frozen,init={init},data={root},unfreeze_top=2")
  assert staged.stage_order == ("frozen", "top")
  top = staged.stages.top
  assert top.init.pretrained_workdir == "@frozen" and top.init.skip == []
  assert [g[0] for g in top.optim.groups] == [
      r"backbone/stage(3|4)_block\d+/(bn\d+|proj_bn)/.*", r"backbone/stage(3|4)_.*",
      r"backbone/.*"]
  assert top.optim.lr == pytest.approx(1e-4) and top.optim.groups[1][1] == {"lr_mult": 0.1}
  with pytest.raises(ValueError, match="needs init=<pretrained workdir>"):
    load_config("resnet", f"imagenet_frozen,data={root}")
  with pytest.raises(ValueError, match="unfreeze_top=5: choose 1..4"):
    load_config("resnet", f"imagenet_frozen,init={init},data={root},unfreeze_top=5")
  with open(init / "model_config.json", "w") as f:
    json.dump({"name": "vit"}, f)
  with pytest.raises(ValueError, match="model_config.json is not a ResNet's"):
    load_config("resnet", f"imagenet_frozen,init={init},data={root}")
  assert load_config("resnet", f"linear,tiny,data={root}").data.source == "folder"


def test_any_image_config_reads_a_folder_by_setting_source_and_root(tmp_path):
  """`--config.data.source=folder --config.data.root=DIR` on a config built on base_config()
  (e.g. configs/digits.py): the keys exist there, and the run is named after the folder,
  not after the embedded dataset the defaults name."""
  from ptft_jax import base_config

  root = _folder(tmp_path / "pets", splits=("train", "validation"))
  config = base_config()
  config.data.source, config.data.root = "folder", root
  config.data.batch_size = config.data.eval_batch_size = 8
  config.data.preprocessing.resize, config.data.preprocessing.crop = 12, 8
  bundle = data.make_data(config.data, 0, preprocessing=data.resolve_preprocessing(config))
  assert bundle.info.name == "pets" and bundle.info.label_names == ["cat", "dog"]
  assert next(bundle.train_iterator)["image"].shape == (8, 8, 8, 3)
  images, labels = _all_rows(bundle, "validation")
  assert len(images) == len(labels) == 12
