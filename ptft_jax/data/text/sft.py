"""Instruction tuning (SFT) data: JSONL prompts and responses, or chats, packed into rows.

Each line of a JSONL file is one example, either

  {"prompt": "Reverse the letters: c a t", "response": "t a c"}
  {"messages": [{"role": "system" | "user" | "assistant" | ..., "content": "..."}, ...]}

(`messages` needs a chat template and at least one assistant turn). A bad line is a
one-line DataError naming `path:line` and the key.

Tokens (`config.data.chat_template`):
  "auto"  the tokenizer's chat template when it has one: a prompt / response line is
          the chat [user: prompt, assistant: response]. Loss on the assistant turns: the
          tokens that overlap what each assistant message adds to the rendering (the
          template's text from `render(messages[:i], add_generation_prompt=True)` to
          `render(messages[:i + 1])`, trailing whitespace dropped), i.e. the reply and the
          template's end-of-turn marker (ChatML's <|im_end|>). Without a template as "none".
  "none"  no template: prefix (e.g. bos) + prompt + response + eos, loss on response + eos;
          the prompt is taken as is (end it with the separator you want).
  PATH    a Jinja chat template file (or pkg:// name) used instead of the tokenizer's.

Without a validation file, `config.data.holdout` (a fraction, `sft_config`'s default 0.05)
of the train examples is held out as the validation split (`holdout`).

An example longer than `seq_len` keeps its first `seq_len` tokens (counted and reported);
one whose prompt leaves no response token inside `seq_len` is refused.

Rows (`format="sft"`): examples packed first-fit into rows of `seq_len`:
  input_ids, segment_ids (1, 2, ... per example, 0 = padding), positions (restart at 0
  per example), attention_mask (segment_ids > 0), loss_mask (1 = a token to predict):
  int32 [seq_len]. No token attends across examples (the decoder's segment mask).

The train stream shuffles the examples per epoch (seeded) and packs them with
Grain's first-fit packing into `batch_size` bins: a Grain DatasetIterator whose
position is saved with the checkpoint. Eval sets pack every example of the split
once, in file order.
"""

import dataclasses
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import grain.experimental as grain_exp
import numpy as np

from ptft_jax.data import sources as image_sources
from ptft_jax.data.text import sources
from ptft_jax.data.text.hf_tokenizer import HfTokenizer
from ptft_jax.errors import ConfigError, DataError

CHAT_MODES = ("auto", "none")
_EVAL_BINS = 16
_EXAMPLE = '{"prompt": "...", "response": "..."} or {"messages": [{"role": ..., "content": ...}]}'


@dataclasses.dataclass(frozen=True)
class SftStats:
  """What encoding one split found.

  Attributes:
    examples: lines read.
    truncated: examples longer than seq_len (cut to their first seq_len tokens).
    tokens: tokens kept, over all examples.
    loss_tokens: tokens trained on (response / assistant tokens, + eos).
  """

  examples: int
  truncated: int
  tokens: int
  loss_tokens: int

  def line(self, split: str, seq_len: int) -> str:
    return (f"sft data, {split}: {self.examples} examples, {self.tokens} tokens "
            f"({self.loss_tokens} trained on), {self.truncated} truncated to seq_len {seq_len}")


# --- reading ------------------------------------------------------------------------------


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
  if not isinstance(messages, list) or not messages:
    raise DataError(f"{where}: 'messages' must be a non-empty list of "
                    '{"role": ..., "content": ...} objects')
  for i, m in enumerate(messages):
    if not isinstance(m, dict):
      raise DataError(f"{where}: messages[{i}] is not an object like "
                      '{"role": ..., "content": ...}')
    for field in ("role", "content"):
      if not isinstance(m.get(field), str):
        raise DataError(f"{where}: messages[{i}] has no {field!r} string field")
  if not any(m["role"] == "assistant" for m in messages):
    raise DataError(f"{where}: 'messages' has no 'assistant' turn (nothing to train on)")
  return [dict(m) for m in messages]


def parse_example(obj: dict[str, Any], where: str) -> dict[str, Any]:
  """One JSONL object -> {"prompt", "response"} or {"messages"}; DataError naming `where`."""
  if "messages" in obj:
    if "prompt" in obj or "response" in obj:
      raise DataError(f"{where}: give 'messages' or 'prompt' + 'response', not both")
    return {"messages": _check_messages(obj["messages"], where)}
  for field in ("prompt", "response"):
    if not isinstance(obj.get(field), str):
      raise DataError(f"{where}: no {field!r} string field (expected {_EXAMPLE})")
  return {"prompt": obj["prompt"], "response": obj["response"]}


def read_sft_jsonl(path: str, key: str) -> list[tuple[str, dict[str, Any]]]:
  """The examples of an SFT JSONL file: [(where "path:line", example)], blank lines skipped.

  Args:
    path: the file or a shipped `pkg://` name.
    key: the config key that named it (for error messages).
  """
  resolved = sources.resolve_path(path)
  if not os.path.isfile(resolved):
    raise DataError(f"{key}: no file {resolved!r}")
  out = []
  for n, obj in image_sources.user_jsonl_objects(resolved, key, _EXAMPLE):
    where = f"{resolved}:{n}"
    out.append((where, parse_example(obj, where)))
  if not out:
    raise DataError(f"{key}: {resolved!r} has no examples")
  return out


def holdout(examples: Sequence[tuple[str, dict[str, Any]]], fraction: float,
            key: str = "config.data.holdout") -> tuple[list, list]:
  """(train, validation): `fraction` of the examples held out, chosen by a hash of each
  example's content (stable under reordering and appending; identical lines go together).
  """
  if not 0 < fraction < 1:
    raise ConfigError(f"{key}={fraction}: a fraction in (0, 1), or 0 with a validation file")
  pick = lambda e: zlib.crc32(json.dumps(e, sort_keys=True).encode()) % 10_000 < fraction * 1e4
  train = [x for x in examples if not pick(x[1])]
  held = [x for x in examples if pick(x[1])]
  if not held or not train:
    raise DataError(f"{key}={fraction} holds out {len(held)} of {len(examples)} examples; "
                    "give config.data.files.validation instead")
  return train, held


# --- tokens -------------------------------------------------------------------------------


def with_template(tok: HfTokenizer, chat_template: str) -> HfTokenizer:
  """`tok` with the chat template `config.data.chat_template` asks for (see the module doc)."""
  if chat_template == "auto":
    return tok
  if chat_template == "none":
    return dataclasses.replace(tok, chat_template=None)
  path = sources.resolve_path(chat_template)
  if not os.path.isfile(path):
    raise ConfigError(f"config.data.chat_template: {chat_template!r} is not one of "
                      f"{CHAT_MODES} nor a template file")
  return dataclasses.replace(
      tok, chat_template=image_sources.read_user_text(path, "config.data.chat_template"))


def _as_chat(example: Mapping[str, Any]) -> list[dict[str, str]]:
  if "messages" in example:
    return list(example["messages"])
  return [{"role": "user", "content": example["prompt"]},
          {"role": "assistant", "content": example["response"]}]


def _assistant_spans(tok: HfTokenizer, messages: list[dict], where: str):
  """(the rendered chat, [(start, end) character spans of the assistant turns])."""
  full = tok.render_chat(messages)
  spans = []
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    before = tok.render_chat(messages[:i], add_generation_prompt=True) if i else ""
    through = tok.render_chat(messages[:i + 1])
    if not (through.startswith(before) and full.startswith(through)):
      raise DataError(f"{where}: the chat template does not render this conversation turn by "
                      "turn (a longer chat must extend a shorter one's text), so its "
                      "assistant tokens cannot be found; set config.data.chat_template")
    end = len(through.rstrip())
    if end > len(before):
      spans.append((len(before), end))
  return full, spans


def encode_example(tok: HfTokenizer, example: Mapping[str, Any],
                   where: str = "example") -> tuple[np.ndarray, np.ndarray]:
  """An example -> (input_ids int32 [n], loss_mask int32 [n]: 1 = a token to predict).

  With a chat template on `tok` the chat is rendered and the assistant turns are
  trained on; without, prefix + prompt + response + eos with loss on response + eos.
  """
  if tok.chat_template is None:
    if "messages" in example:
      raise DataError(f"{where}: 'messages' needs a chat template, and the tokenizer has none "
                      "(or config.data.chat_template='none'); write prompt / response lines")
    if tok.eos_id is None:
      raise DataError(f"{tok.path}: the tokenizer has no eos token to end a response with; "
                      "set eos_token in tokenizer_config.json")
    prompt = list(tok.prefix_ids) + tok.encode(example["prompt"])
    response = tok.encode(example["response"]) + [tok.eos_id]
    ids = prompt + response
    mask = [0] * len(prompt) + [1] * len(response)
  else:
    text, spans = _assistant_spans(tok, _as_chat(example), where)
    encoding = tok.tokenizer.encode(text, add_special_tokens=False)
    ids = encoding.ids
    mask = [int(any(s < stop and e > start for start, stop in spans))
            for s, e in encoding.offsets]
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def prompt_ids(tok: HfTokenizer, example: Mapping[str, Any] | str) -> list[int]:
  """The tokens a model is given to answer `example` as `encode_example` trained it.

  `example`: a prompt string, a {"prompt", ...} record, or {"messages": [...]} (the
  chat up to its last message, then the template's generation prompt). Generation
  continues from these ids; its answer ends at one of `tok.stop_ids`.
  """
  if isinstance(example, str):
    example = {"prompt": example}
  if tok.chat_template is None:
    if "messages" in example:
      raise DataError("'messages' needs a chat template, and the tokenizer has none")
    return list(tok.prefix_ids) + tok.encode(example["prompt"])
  if "messages" in example:
    chat = [m for m in example["messages"]]
    chat = chat[:-1] if chat and chat[-1]["role"] == "assistant" else chat
  else:
    chat = [{"role": "user", "content": example["prompt"]}]
  return tok.chat_ids(chat, add_generation_prompt=True)


def encode_split(tok: HfTokenizer, examples: Sequence[tuple[str, Mapping[str, Any]]],
                 seq_len: int) -> tuple[list[dict[str, np.ndarray]], SftStats]:
  """Examples -> ([{"input_ids", "loss_mask"} of <= seq_len tokens], stats).

  Raises DataError for an example whose first `seq_len` tokens hold nothing to train on.
  """
  out, truncated, tokens, loss = [], 0, 0, 0
  for where, example in examples:
    ids, mask = encode_example(tok, example, where)
    if len(ids) > seq_len:
      truncated += 1
      ids, mask = ids[:seq_len], mask[:seq_len]
    if not mask[1:].any():  # the first token is never predicted
      raise DataError(f"{where}: no response token within config.data.seq_len={seq_len} "
                      f"(the example is {len(encode_example(tok, example, where)[0])} tokens); "
                      "raise seq_len or shorten the prompt")
    out.append({"input_ids": ids, "loss_mask": mask})
    tokens += len(ids)
    loss += int(mask[1:].sum())
  return out, SftStats(len(out), truncated, tokens, loss)


# --- rows ---------------------------------------------------------------------------------


def _row(element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  segments = np.asarray(element["input_ids_segment_ids"], np.int32)
  return {"input_ids": np.asarray(element["input_ids"], np.int32), "segment_ids": segments,
          "positions": np.asarray(element["input_ids_positions"], np.int32),
          "attention_mask": (segments > 0).astype(np.int32),
          "loss_mask": np.asarray(element["loss_mask"], np.int32)}


def _pack(ds: grain.IterDataset, seq_len: int, bins: int, seed: int, shuffle: bool):
  packed = grain_exp.FirstFitPackIterDataset(
      ds, length_struct={"input_ids": seq_len, "loss_mask": seq_len}, num_packing_bins=bins,
      seed=seed, shuffle_bins=shuffle)
  return packed.map(_row)


def train_iterator(examples: Sequence[dict[str, np.ndarray]], *, seq_len: int, seed: int,
                   batch_size: int, shard_index: int = 0,
                   shard_count: int = 1) -> grain.DatasetIterator:
  """Infinite batches of packed rows: a fresh seeded order each epoch; example k of the
  global stream goes to process k % shard_count; `batch_size` packing bins."""
  ds = grain.MapDataset.source(list(examples)).shuffle(seed=seed).repeat(None)
  ds = ds[shard_index::shard_count].to_iter_dataset()
  rows = _pack(ds, seq_len, batch_size, seed, True)
  return iter(rows.batch(batch_size, drop_remainder=True))


def eval_rows(examples: Sequence[dict[str, np.ndarray]], seq_len: int) -> dict[str, np.ndarray]:
  """Every example once, in order, packed: column -> int32 [rows, seq_len]."""
  ds = grain.MapDataset.source(list(examples)).to_iter_dataset()
  rows = list(_pack(ds, seq_len, _EVAL_BINS, 0, False))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
