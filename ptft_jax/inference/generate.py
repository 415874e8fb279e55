r"""Command line: generate text with a decoder (a fine-tuned run, an imported workdir, a HF dir).

  python -m ptft_jax.generate --workdir RUN (--prompt TEXT | --input FILE.jsonl) \
      --max-new-tokens N [--temperature T] [--top-p P] [--seed S] \
      [--checkpoint latest|best|STEP] [--batch-size B] [--output FILE.jsonl]

--input lines are JSON objects with one of: "prompt" (text), "input_ids" (a list of
token ids) or "messages" ([{"role", "content"}, ...], rendered with the model's chat
template and its generation prompt); an "id" is copied to the output. Output: JSONL,
one line per input in input order, {"id" (or "line"), "completion", "token_ids",
"finish_reason": "eos" | "length"}, to --output (written atomically) or stdout. Greedy
at temperature 0 (the default). Lines that also carry the expected answer ("response",
or the last assistant message of "messages") are scored: each output line gets
"exact_match" (completion == answer, surrounding whitespace ignored) and the summary
on stderr the fraction. A bad line prints `error: FILE:LINE: why` and exits 2
before anything is generated.
"""

import argparse
import json
import sys

from ptft_jax.errors import DataError, UserError


def read_prompts(path: str) -> list[dict]:
  """JSONL -> [{"key": {"id"|"line": ...}, "prompt"|"input_ids"|"messages": ..., "answer"}].

  `path` may be a shipped asset (`pkg://sft_tiny/test.jsonl`)."""
  from ptft_jax.data.sources import user_jsonl_objects
  from ptft_jax.data.text.sources import resolve_path

  path = resolve_path(path)
  rows = []
  for n, obj in user_jsonl_objects(path, "--input", '{"prompt": "..."}'):
    key = {"id": obj["id"]} if "id" in obj else {"line": n}
    answer = obj.get("response") if isinstance(obj.get("response"), str) else None
    if isinstance(obj.get("prompt"), str):
      rows.append({"key": key, "prompt": obj["prompt"], "answer": answer})
    elif isinstance(obj.get("input_ids"), list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in obj["input_ids"]):
      rows.append({"key": key, "input_ids": obj["input_ids"]})
    elif isinstance(obj.get("messages"), list):
      messages = obj["messages"]
      if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        answer, messages = messages[-1].get("content"), messages[:-1]  # the turn to produce
      rows.append({"key": key, "messages": messages, "answer": answer})
    else:
      raise DataError(f'{path}:{n}: needs "prompt" (a string), "input_ids" (a list of ints) '
                      'or "messages" (a list of {"role", "content"})')
  if not rows:
    raise DataError(f"--input {path}: no prompts")
  return rows


def token_rows(generator, rows: list[dict]) -> list[list[int]]:
  """Each row's prompt as token ids (texts and chats through the generator's tokenizer)."""
  out = []
  for row in rows:
    if "input_ids" in row:
      out.append(row["input_ids"])
      continue
    if generator.tokenizer is None:
      raise UserError("this model directory has no tokenizer.json: give input_ids lines")
    if "messages" in row:
      out.append(generator.encode_chat(row["messages"]))
    else:
      out.append(generator.encode_prompts([row["prompt"]])[0])
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ptft_jax.generate",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="a run, an imported workdir or a Hugging Face model directory")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--prompt", help="one prompt (text)")
  source.add_argument("--input", help="JSONL prompts")
  parser.add_argument("--max-new-tokens", type=int, default=64)
  parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--checkpoint", default="latest", help="latest | best | a step")
  parser.add_argument("--batch-size", type=int, default=16, help="prompts per batch")
  parser.add_argument("--output", help="JSONL output (default: stdout)")
  parser.add_argument("--debug", action="store_true", help="tracebacks for user errors")
  args = parser.parse_args(argv)
  try:
    import logging

    from absl import logging as absl_logging

    from ptft_jax.inference import generator as generation
    from ptft_jax.inference.predict import write_jsonl

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    if args.batch_size < 1:
      raise UserError(f"--batch-size {args.batch_size}: use 1 or more")
    rows = ([{"key": {"line": 1}, "prompt": args.prompt}] if args.prompt is not None
            else read_prompts(args.input))
    generator = generation.load_generator(args.workdir, args.checkpoint)
    prompts = token_rows(generator, rows)
    results = []
    for start in range(0, len(prompts), args.batch_size):
      results += generator.generate(
          token_ids=prompts[start:start + args.batch_size], max_new_tokens=args.max_new_tokens,
          temperature=args.temperature, top_p=args.top_p, seed=args.seed + start)
    out = [{**row["key"], "completion": r.text, "token_ids": r.token_ids,
            "finish_reason": r.finish_reason} for row, r in zip(rows, results, strict=True)]
    scored = [(line, row["answer"]) for line, row in zip(out, rows, strict=True)
              if row.get("answer") is not None and line["completion"] is not None]
    for line, answer in scored:
      line["exact_match"] = line["completion"].strip() == answer.strip()
    if args.output:
      write_jsonl(args.output, out)
    else:
      for line in out:
        print(json.dumps(line))
  except UserError as e:
    if args.debug:
      raise
    lines = [line for line in str(e).splitlines() if line.strip()]
    print(f"error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
    return 2
  score = ""
  if scored:
    hits = sum(line["exact_match"] for line, _ in scored)
    score = f"; exact match {hits}/{len(scored)} = {hits / len(scored):.3f}"
  if args.output or score:
    print(f"{len(out)} generations ({generator.compiles} compilations) from {args.workdir}"
          f"{score}" + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
