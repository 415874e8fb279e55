"""Per-example text transforms: sentence pairs (BERT), document pieces (packing), labeled text.

All are pure functions of their inputs and a numpy Generator, so Grain's
`random_map` (seeded per example index) makes them exactly repeatable after a
resume. Token ids are int32; sentences are int32 arrays without special tokens.
"""

from collections.abc import Sequence

import numpy as np
import tokenizers

from ptft_jax.data.text.tokenizer import Vocab

Document = Sequence[np.ndarray]  # sentences, each int32 [n] token ids


def tokenize_document(tokenizer: tokenizers.Tokenizer, sentences: Sequence[str]) -> list:
  """Sentences -> int32 token-id arrays (no special tokens; empty ones dropped)."""
  encoded = tokenizer.encode_batch(list(sentences), add_special_tokens=False)
  return [np.asarray(e.ids, np.int32) for e in encoded if e.ids]


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator):
  """Trims the longer of `a` / `b` from a random end until both fit (as BERT)."""
  while len(a) + len(b) > max_tokens:
    longer = a if len(a) > len(b) else b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def _take(doc: Document, start: int, budget: int) -> list[np.ndarray]:
  """Sentences of `doc` from `start` until `budget` tokens are reached (at least one)."""
  out, n = [], 0
  for sentence in doc[start:]:
    out.append(sentence)
    n += len(sentence)
    if n >= budget:
      break
  return out


def _flat(sentences: Sequence[np.ndarray]) -> list[int]:
  return np.concatenate(sentences).tolist() if len(sentences) else []


def sentence_pair(
    docs: Sequence[Document], index: int, rng: np.random.Generator, *, seq_len: int,
    vocab: Vocab, nsp: bool, start: int | None = None,
) -> tuple[dict[str, np.ndarray], int]:
  """One BERT pretraining example from document `index`.

  Takes sentences from `start` (random when None) up to `seq_len` tokens.
  With `nsp`, they are split at a random sentence boundary into A and B; with
  probability 1/2 (always when there is one sentence) B is replaced by
  sentences from a random other document (`next_sentence_label` 1; 0 = B
  really follows A). Without `nsp`, one segment.

  Returns:
    ({"input_ids", "token_type_ids", "attention_mask": int32 [seq_len],
      "next_sentence_label": int32 [] (with nsp)}, the sentence index where
    the next example of a sequential walk through the document starts).
  """
  doc = docs[index]
  max_tokens = seq_len - (3 if nsp else 2)
  start = int(rng.integers(len(doc))) if start is None else start
  chunk = _take(doc, start, max_tokens)
  if not nsp:
    a, b, label = _flat(chunk)[:max_tokens], [], None
    next_start = start + len(chunk)
  else:
    a_end = int(rng.integers(1, len(chunk))) if len(chunk) > 1 else 1
    a = _flat(chunk[:a_end])
    if len(chunk) == 1 or rng.random() < 0.5:
      other = int(rng.integers(len(docs) - 1))
      other += other >= index  # any document but this one
      other_doc = docs[other]
      b = _flat(_take(other_doc, int(rng.integers(len(other_doc))), max_tokens - len(a)))
      label, next_start = 1, start + a_end  # the unused sentences start the next example
    else:
      b, label = _flat(chunk[a_end:]), 0
      next_start = start + len(chunk)
    _truncate_pair(a, b, max_tokens, rng)
  ids = [vocab.cls_id, *a, vocab.sep_id] + ([*b, vocab.sep_id] if nsp else [])
  types = [0] * (len(a) + 2) + [1] * (len(ids) - len(a) - 2)
  pad = seq_len - len(ids)
  example = {
      "input_ids": np.asarray(ids + [vocab.pad_id] * pad, np.int32),
      "token_type_ids": np.asarray(types + [0] * pad, np.int32),
      "attention_mask": np.asarray([1] * len(ids) + [0] * pad, np.int32),
  }
  if nsp:
    example["next_sentence_label"] = np.asarray(label, np.int32)
  return example, next_start


def document_tokens(doc: Document, end_id: int) -> np.ndarray:
  """A document's tokens followed by the end-of-document token: int32 [n]."""
  return np.concatenate([*doc, np.asarray([end_id], np.int32)])


def random_piece(doc: Document, rng: np.random.Generator, *, max_len: int,
                 end_id: int) -> dict[str, np.ndarray]:
  """{"input_ids": int32 [<= max_len]}: the document, or a random window of it if longer."""
  tokens = document_tokens(doc, end_id)
  if len(tokens) > max_len:
    start = int(rng.integers(len(tokens) - max_len + 1))
    tokens = tokens[start:start + max_len]
  return {"input_ids": tokens}


def packed_row(element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Grain packing output -> {"input_ids", "segment_ids", "attention_mask"}: int32 [seq_len].

  Segment ids count the pieces of a row from 1; padding is segment 0.
  """
  segments = np.asarray(element["input_ids_segment_ids"], np.int32)
  return {"input_ids": np.asarray(element["input_ids"], np.int32), "segment_ids": segments,
          "attention_mask": (segments > 0).astype(np.int32)}


def tokenize_labeled(
    tokenizer: tokenizers.Tokenizer, texts: Sequence[str],
    pairs: Sequence[str | None] | None, seq_len: int,
) -> tuple[list[tokenizers.Encoding], int]:
  """[CLS] a [SEP] (b [SEP]), truncated longest-first to `seq_len` tokens, not padded.

  The one encoding of labeled text: evaluation pads it to `seq_len` (`encode_labeled`),
  prediction to a length bucket (ptft_jax.inference), so both see the same tokens.

  Args:
    tokenizer: the run's tokenizer (lowercasing as it was loaded).
    texts: first texts.
    pairs: second texts (None in a row without one), or None for none at all.
    seq_len: the run's `config.data.seq_len`.

  Returns:
    (encodings, how many were longer than `seq_len` and were truncated).
  """
  inputs = list(texts) if pairs is None else [
      t if p is None else (t, p) for t, p in zip(texts, pairs, strict=True)]
  tokenizer.enable_truncation(seq_len)
  try:
    encoded = tokenizer.encode_batch(inputs)
  finally:
    tokenizer.no_truncation()
  return encoded, sum(bool(e.overflowing) for e in encoded)


def pad_encodings(encoded: Sequence[tokenizers.Encoding], length: int,
                  pad_id: int) -> dict[str, np.ndarray]:
  """Encodings -> {"input_ids", "token_type_ids", "attention_mask"}: int32 [n, length].

  Padding: `pad_id`, token type 0, attention 0 (rows must hold at most `length` tokens).
  """
  ids = np.full((len(encoded), length), pad_id, np.int32)
  types = np.zeros((len(encoded), length), np.int32)
  mask = np.zeros((len(encoded), length), np.int32)
  for i, e in enumerate(encoded):
    n = len(e.ids)
    ids[i, :n], types[i, :n], mask[i, :n] = e.ids, e.type_ids, e.attention_mask
  return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def encode_labeled(
    tokenizer: tokenizers.Tokenizer, vocab: Vocab, texts: Sequence[str],
    pairs: Sequence[str] | None, seq_len: int,
) -> dict[str, np.ndarray]:
  """`tokenize_labeled` padded to `seq_len`: what training and evaluation see.

  Returns {"input_ids", "token_type_ids", "attention_mask": int32 [n, seq_len]}.
  """
  encoded, _ = tokenize_labeled(tokenizer, texts, pairs, seq_len)
  return pad_encodings(encoded, seq_len, vocab.pad_id)
