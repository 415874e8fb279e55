r"""Command line: predict with a fine-tuned run.

  python -m ptft_jax.predict --workdir RUN [--checkpoint latest|best|STEP] \
      --input FILE --output FILE [--batch_size N] [--strict]

Inputs, by what `--input` names:
  a folder   PNG / JPEG images (sorted by file name); decoded with PIL, made
             grayscale or RGB and resized to the run's [h, w, c], scaled to [0, 1];
             a run trained on an image folder decodes them as its evaluation did
             (shorter side resized, centre crop: labels.json "preprocessing")
  *.npy      an image array [n, h, w, c] (or [n, h, w] for one channel)
  any file   JSONL: one {"text": ..., "text_b": ... (optional), "id": ... (optional)}
             object per line (text runs)

Output: JSONL, one line per input in input order: {"id" (or "line"), "label",
"probabilities": {name: p}} for classification, {"id", "value"} for regression.
A bad input (unreadable image, a line without "text", ...) is reported on
stderr with its line number or file name and skipped; with --strict the
command exits 2 on the first one. A file that is not what it claims (bytes that
are not UTF-8 in the JSONL, an .npy that is no NumPy array of numbers) and other
user errors print one line and exit 2.
"""

import argparse
import json
import os
import sys

import numpy as np

from ptft_jax.errors import DataError, UserError
from ptft_jax.utils import write_text_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_jsonl(path: str) -> tuple[list[dict], list[str]]:
  """JSONL texts -> ([{"id" or "line", "text", "text_b"}], problems as "path:line: why")."""
  from ptft_jax.data.sources import user_text_lines

  rows, problems = [], []
  # Bytes that are not UTF-8 fail the whole file (a wrong encoding is rarely one line's).
  for n, line in enumerate(user_text_lines(path, "--input"), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      problems.append(f"{path}:{n}: not valid JSON ({e.msg})")
      continue
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
      problems.append(f'{path}:{n}: no "text" string field')
      continue
    if obj.get("text_b") is not None and not isinstance(obj["text_b"], str):
      problems.append(f'{path}:{n}: "text_b" must be a string')
      continue
    key = {"id": obj["id"]} if "id" in obj else {"line": n}
    rows.append({**key, "text": obj["text"], "text_b": obj.get("text_b")})
  return rows, problems


def load_image(path: str, shape: tuple[int, int, int], preprocessing=None) -> np.ndarray:
  """One image file -> float32 [h, w, c] in [0, 1] (grayscale for c=1, resized if needed).

  `preprocessing` with a crop (runs on image folders): RGB, shorter side to its resize,
  centre crop, exactly as the run's evaluation decoded its images. The mean/std are
  applied later, on the device, by the predictor.
  """
  from PIL import Image

  h, w, c = shape
  if preprocessing is not None and preprocessing.crop and c == 3:
    from ptft_jax.data.image_folder import decode_image

    pixels = decode_image(path, preprocessing.resize or preprocessing.crop, preprocessing.crop,
                          preprocessing.interpolation)
    if pixels.shape[:2] != (h, w):
      image = Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR)
      pixels = np.asarray(image, np.uint8)
    return pixels.astype(np.float32) / np.float32(255)
  with Image.open(path) as image:
    image = image.convert("L" if c == 1 else "RGB")
    if image.size != (w, h):
      image = image.resize((w, h), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, np.uint8)
  return (pixels.reshape(h, w, c).astype(np.float32) / np.float32(255)).astype(np.float32)


def read_images(folder: str, shape, preprocessing=None) -> tuple[list[str], np.ndarray,
                                                                    list[str]]:
  """Images of `folder` -> (file names, float32 [n, h, w, c], problems as "file: why")."""
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise DataError(f"--input {folder}: no PNG or JPEG files")
  ids, images, problems = [], [], []
  for name in names:
    try:
      images.append(load_image(os.path.join(folder, name), shape, preprocessing))
      ids.append(name)
    except Exception as e:  # noqa: BLE001 -- PIL raises many kinds for a bad file
      problems.append(f"{os.path.join(folder, name)}: cannot read the image "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
  return ids, np.stack(images) if images else np.zeros((0, *shape), np.float32), problems


def read_array(path: str, shape) -> np.ndarray:
  """An .npy of images [n, h, w, c] (or [n, h, w] when c=1) -> float32 in [0, 1]."""
  from ptft_jax.inference.predictor import to_unit_range

  with open(path, "rb") as f:
    magic = f.read(6)
  if magic != b"\x93NUMPY":  # np.load would blame pickling for any other file
    raise DataError(f"--input {path}: not a NumPy .npy file (no .npy header); save the images "
                    "with numpy.save")
  try:
    array = np.load(path, allow_pickle=False)  # never unpickle: a file can run code
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise DataError(f"--input {path}: holds Python objects (dtype object); save a numeric "
                      "array of images") from None
    raise DataError(f"--input {path}: cannot read the array ({e})") from None
  except (OSError, EOFError) as e:
    raise DataError(f"--input {path}: cannot read the array ({e})") from None
  if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
    raise DataError(f"--input {path}: an array of dtype {array.dtype}; save a numeric array "
                    "of images")
  given = tuple(array.shape)
  if array.ndim == 3 and shape[-1] == 1:
    array = array[..., None]
  if array.ndim != 4 or tuple(array.shape[1:]) != tuple(shape):
    raise DataError(f"--input {path}: array of shape {given}; this run takes "
                    f"[n, {', '.join(map(str, shape))}] (n examples of [h, w, c])")
  return to_unit_range(array)


def predict_file(predictor, input_path: str, *, strict: bool = False,
                 progress: bool = False) -> tuple[list[dict], list[str]]:
  """Reads `input_path` (see the module docstring); returns (output rows, problems)."""
  if not os.path.exists(input_path):
    raise DataError(f"--input {input_path}: no such file or folder")
  if predictor.text:
    if os.path.isdir(input_path) or input_path.endswith(".npy"):
      raise DataError(f"--input {input_path}: this is a text run; give a JSONL file of "
                      '{"text": ...} lines')
    rows, problems = read_jsonl(input_path)
    keys = [{k: r[k] for k in ("id", "line") if k in r} for r in rows]
    inputs = [(r["text"], r["text_b"]) if r["text_b"] is not None else r["text"] for r in rows]
  else:
    shape = tuple(predictor.run.info.image_shape)
    if os.path.isdir(input_path):
      names, inputs, problems = read_images(
          input_path, shape, getattr(predictor.run.info, "preprocessing", None))
      keys = [{"id": n} for n in names]
    elif input_path.endswith(".npy"):
      inputs, problems = read_array(input_path, shape), []
      keys = [{"id": i} for i in range(len(inputs))]
    else:
      raise DataError(f"--input {input_path}: this is an image run; give a folder of PNG / "
                      "JPEG files or an .npy array")
  if problems and strict:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise DataError(f"{problems[0]}{more}; fix the input or drop --strict to skip bad inputs")
  out = predictor.predict(inputs, progress=progress) if len(inputs) else None
  return [{**key, **out.row(i)} for i, key in enumerate(keys)], problems


def write_jsonl(path: str, rows: list[dict]) -> None:
  """Writes `rows` as JSONL atomically (a crash leaves the old file or the new one); `path`
  may be a gs:// URL, e.g. beside a gs:// run."""
  write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ptft_jax.predict",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the fine-tuned run")
  parser.add_argument("--checkpoint", default="latest", help="latest | best | a step")
  parser.add_argument("--input", required=True, help="JSONL file, image folder or .npy")
  parser.add_argument("--output", required=True, help="JSONL predictions")
  parser.add_argument("--batch_size", type=int, default=None, help="rows per compiled batch")
  parser.add_argument("--strict", action="store_true", help="exit 2 on the first bad input")
  parser.add_argument("--debug", action="store_true", help="tracebacks for user errors")
  args = parser.parse_args(argv)
  try:
    import logging

    from absl import logging as absl_logging

    from ptft_jax.inference import predictor as inference

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    predictor = inference.load_predictor(args.workdir, args.checkpoint,
                                         batch_size=args.batch_size)
    rows, problems = predict_file(predictor, args.input, strict=args.strict,
                                  progress=sys.stderr.isatty())
    for p in problems:
      print(f"warning: skipped {p}", file=sys.stderr)
    write_jsonl(args.output, rows)
  except UserError as e:
    if args.debug:
      raise
    lines = [line for line in str(e).splitlines() if line.strip()]
    print(f"error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
    return 2
  print(f"{len(rows)} predictions ({len(problems)} inputs skipped), step "
        f"{predictor.run.step} of {args.workdir} -> {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
