"""The preprocessing pretrained weights expect: mean/std, resize, crop, interpolation.

An imported vision workdir (`python -m ptft_jax.convert vision`) holds
`preprocessing.json`:

  {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
   "resize": 256, "crop": 224, "interpolation": "bilinear"}

A run that starts from it (`config.init.pretrained_workdir`) uses those values unless
`config.data.preprocessing` sets them (a key left empty / 0 is not set):

  mean, std       per channel, on [0, 1] pixels: the model sees (x - mean) / std. Applied
                  on the device by the task (after augmentation) in training, evaluation
                  and prediction alike; TFDS and image-folder data alike.
  resize, crop    image folders: the shorter side is resized to `resize`, then the centre
                  `crop` x `crop` is cut (train and eval; training then augments on the
                  device). TFDS images keep their stored size.
  interpolation   "bilinear" | "bicubic": the Pillow filter of that resize.

The run records what it resolved in its own `<workdir>/preprocessing.json` (and
labels.json), so resuming, `--mode=eval` and `python -m ptft_jax.predict` use it
without the pretrained workdir, and a later stage that starts from this run inherits it.

Only `ptft_jax.errors` / `ptft_jax.utils` are imported (data may not import train).
"""

import dataclasses
import json
import os
from typing import Any

from ptft_jax.errors import ConfigError, DataError
from ptft_jax.utils import absolute_path, is_file, read_json, read_text, write_json_atomic

PREPROCESSING_FILE = "preprocessing.json"
INTERPOLATIONS = ("bilinear", "bicubic")
# Image folders without any preprocessing given: ImageNet's evaluation geometry.
DEFAULT_RESIZE, DEFAULT_CROP = 256, 224
_FIELDS = ("mean", "std", "resize", "crop", "interpolation")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Resolved preprocessing (see the module docstring).

  Attributes:
    mean: per-channel means on [0, 1] pixels, or () (no normalization).
    std: per-channel standard deviations (same length as `mean`), or ().
    resize: shorter side before the centre crop (image folders); 0: not given.
    crop: side of the square the model sees (image folders); 0: not given.
    interpolation: "bilinear" or "bicubic".
    origin: where the values came from (a file, "config.data.preprocessing", or "" for
      defaults), for log lines.
  """

  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  resize: int = 0
  crop: int = 0
  interpolation: str = "bilinear"
  origin: str = ""

  @property
  def normalizes(self) -> bool:
    return bool(self.mean)

  def geometry(self) -> tuple[int, int]:
    """(resize, crop) for an image folder, defaults filled in (256 / 224, or crop / 0.875)."""
    crop = self.crop or DEFAULT_CROP
    resize = self.resize or (round(crop / 0.875) if self.crop else DEFAULT_RESIZE)
    return resize, crop

  def record(self) -> dict[str, Any]:
    """The JSON form: only the fields that are set (mean/std, resize/crop, interpolation)."""
    out: dict[str, Any] = {}
    if self.mean:
      out["mean"], out["std"] = list(self.mean), list(self.std)
    if self.resize:
      out["resize"] = self.resize
    if self.crop:
      out["crop"] = self.crop
    out["interpolation"] = self.interpolation
    return out

  def describe(self) -> str:
    parts = []
    if self.mean:
      parts.append("mean " + "/".join(f"{m:g}" for m in self.mean)
                   + " std " + "/".join(f"{s:g}" for s in self.std))
    if self.resize or self.crop:
      parts.append(f"resize {self.resize or '-'} crop {self.crop or '-'} {self.interpolation}")
    return ", ".join(parts) or "none"


def say(prep: Preprocessing, what: str) -> None:
  """One console line (process 0): the preprocessing `what` uses and where it came from."""
  import jax

  if jax.process_index() == 0:
    print(f"preprocessing of {what}: {prep.describe()} "
          f"(from {prep.origin or 'the defaults'})", flush=True)


def _check(values: dict[str, Any], where: str, error=DataError) -> dict[str, Any]:
  """Validated fields of a preprocessing mapping; raises `error` naming `where` and the key."""
  out: dict[str, Any] = {}
  for key in ("mean", "std"):
    v = values.get(key)
    if v in (None, (), []):
      continue
    if (not isinstance(v, (list, tuple)) or not v
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
      raise error(f"{where}: {key!r} must be a list of numbers, one per channel, got {v!r}")
    out[key] = tuple(float(x) for x in v)
  if ("mean" in out) != ("std" in out):
    raise error(f"{where}: give 'mean' and 'std' together")
  if "mean" in out:
    if len(out["mean"]) != len(out["std"]):
      raise error(f"{where}: 'mean' has {len(out['mean'])} values and 'std' "
                  f"{len(out['std'])}; give one per channel")
    if not all(s > 0 for s in out["std"]):
      raise error(f"{where}: 'std' must be > 0, got {list(out['std'])}")
  for key in ("resize", "crop"):
    v = values.get(key)
    if v in (None, 0):
      continue
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise error(f"{where}: {key!r} must be a positive integer (pixels), got {v!r}")
    out[key] = int(v)
  if out.get("resize") and out.get("crop") and out["crop"] > out["resize"]:
    raise error(f"{where}: 'crop' {out['crop']} is larger than 'resize' {out['resize']}; the "
                "crop is cut from the resized image")
  interp = values.get("interpolation")
  if interp not in (None, ""):
    if interp not in INTERPOLATIONS:
      raise error(f"{where}: 'interpolation' must be one of {list(INTERPOLATIONS)}, "
                  f"got {interp!r}")
    out["interpolation"] = interp
  return out


def read_preprocessing(path: str) -> dict[str, Any]:
  """The validated fields of a `preprocessing.json` (DataError naming the file and key)."""
  try:
    values = json.loads(read_text(path))
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read it ({e})") from None
  except ValueError as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(values, dict):
    raise DataError(f"{path}: expected a JSON object with {', '.join(_FIELDS)}")
  return _check(values, path)


def _from_config(dc) -> dict[str, Any]:
  """The fields `config.data.preprocessing` sets (empty / 0 entries are not set)."""
  pc = dc.get("preprocessing") if dc is not None else None
  if not pc:
    return {}
  plain = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(pc).items()}
  unknown = sorted(set(plain) - set(_FIELDS))
  if unknown:
    raise ConfigError(f"config.data.preprocessing: unknown key(s) {unknown}; it takes "
                      f"{', '.join(_FIELDS)}")
  return _check(plain, "config.data.preprocessing", ConfigError)


def resolve(config, workdir: str = "") -> Preprocessing:
  """The preprocessing a run uses: config.data.preprocessing over the pretrained workdir's.

  Order, per field: `config.data.preprocessing` (when set), then `<workdir>/preprocessing.json`
  (the run's own record: a resumed run keeps what it started with, even if the pretrained
  workdir moved), then `<config.init.pretrained_workdir>/preprocessing.json`. A crop given in
  the config without a resize scales the inherited resize by the same factor.

  Args:
    config: the run's (stage's) config: reads `data.preprocessing`, `init.pretrained_workdir`.
    workdir: the run's workdir ("" when there is none, e.g. a data-only caller).
  """
  init = config.init.get("pretrained_workdir", "") if "init" in config else ""
  override = _from_config(config.get("data"))
  base, origin = {}, ""
  own = os.path.join(workdir, PREPROCESSING_FILE) if workdir else ""
  if own and is_file(own) and _recorded_source(own) == _source(init, override):
    base, origin = read_preprocessing(own), own
  elif init and not init.startswith("@") and is_file(os.path.join(init, PREPROCESSING_FILE)):
    origin = os.path.join(init, PREPROCESSING_FILE)
    base = read_preprocessing(origin)
  if "crop" in override and "resize" not in override and base.get("resize") and base.get("crop"):
    override["resize"] = max(override["crop"], round(override["crop"] * base["resize"]
                                                      / base["crop"]))
  if override:
    origin = "config.data.preprocessing" + (f" over {origin}" if origin else "")
  fields = {**base, **override}
  if fields.get("resize") and fields.get("crop") and fields["crop"] > fields["resize"]:
    raise ConfigError(f"config.data.preprocessing: crop {fields['crop']} is larger than resize "
                      f"{fields['resize']} (from {origin})")
  return Preprocessing(**fields, origin=origin)


def _source(init: str, override: dict) -> dict:
  """What a resolution started from: the pretrained workdir (absolute) and the config's fields."""
  return {"init": absolute_path(init) if init else "",
          "config": {k: list(v) if isinstance(v, tuple) else v for k, v in override.items()}}


def _recorded_source(path: str) -> dict | None:
  """The `_source` a run's own record was resolved from (None when unreadable)."""
  try:
    record = read_json(path)
    return {"init": record.get("init", ""), "config": record.get("config", {})}
  except (OSError, ValueError, AttributeError):
    return None


def write_preprocessing(workdir: str, config, prep: Preprocessing) -> None:
  """Writes `<workdir>/preprocessing.json` (atomically): the fields and what they came from.

  `config` is the run's: its init and `config.data.preprocessing` are recorded, so the
  record is reused only while they stay the same (see `resolve`). Process 0 only.
  """
  init = config.init.get("pretrained_workdir", "") if "init" in config else ""
  source = _source(init, _from_config(config.get("data")))
  write_json_atomic(os.path.join(workdir, PREPROCESSING_FILE), {**prep.record(), **source})


def from_record(record: dict | None) -> Preprocessing | None:
  """labels.json's "preprocessing" entry -> Preprocessing (None when absent: older runs)."""
  if not record:
    return None
  return Preprocessing(**_check(record, "labels.json preprocessing"), origin="labels.json")
