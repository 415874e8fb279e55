"""WordPiece tokenization with `tokenizers`: load a BERT vocab.txt, or train one on local text.

A trained vocabulary is a pure function of (training files, vocab_size,
lowercase): it is cached under `<data_dir>/ptft_text_vocab/` by a hash of those,
so a fine-tuning run that names the same settings gets the very same ids as the
pretraining run. It always has exactly `vocab_size` entries (padded with
`[unusedN]` tokens), so `config.model.vocab_size` can equal
`config.data.tokenizer.vocab_size`.
"""

import collections
import dataclasses
import hashlib
import heapq
import itertools
import os
from collections.abc import Sequence

import ml_collections
import tokenizers

from ptft_jax.data.sources import read_user_text, user_text_lines
from ptft_jax.data.text.hf_tokenizer import HfTokenizer, load_hf_tokenizer
from ptft_jax.data.text.sources import resolve_path
from ptft_jax.errors import ConfigError, DataError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CACHE = "ptft_text_vocab"
_VOCAB_KEY = "config.data.tokenizer.vocab"


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Ids the pipelines and tasks need.

  Attributes:
    path: the vocab.txt in use.
    size: number of entries (the model's vocab_size must equal it).
    pad_id, unk_id, cls_id, sep_id, mask_id: the special tokens' ids (a Hugging Face
      tokenizer's: bos as cls, eos as sep, pad as mask; see `hf_vocab`).
    exact: the model's vocab_size must equal `size` (False: at least `size`, as Hugging
      Face models may pad their embedding tables).
  """

  path: str
  size: int
  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  exact: bool = True

  @property
  def special_ids(self) -> tuple[int, ...]:
    return (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)


def _word_counts(texts: Sequence[str], lowercase: bool) -> collections.Counter:
  """Words as BERT's normalizer and pre-tokenizer cut them, with their counts."""
  normalizer = tokenizers.normalizers.BertNormalizer(lowercase=lowercase)
  pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  counts = collections.Counter()
  for text in texts:
    for line in text.splitlines():
      counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
  return counts


def train_vocab(texts: Sequence[str], vocab_size: int, *, lowercase: bool = True,
                min_frequency: int = 2, max_alphabet: int = 500) -> list[str]:
  """WordPiece vocabulary of exactly `vocab_size` tokens learned from `texts`.

  Byte-pair merges over words, as the `tokenizers` WordPiece trainer does, but
  with ties broken by the tokens themselves: the same texts give the same
  vocabulary in any process (the `tokenizers` trainer does not promise that).
  Order: special tokens (ids 0..4, SPECIAL_TOKENS order), characters (word-
  initial and `##` forms) by frequency, merged tokens in merge order, then
  `[unusedN]` up to `vocab_size`.
  """
  words = _word_counts(texts, lowercase)
  chars = collections.Counter()
  for word, n in words.items():
    chars.update({c: n for c in word})
  alphabet = sorted((c for c, n in chars.items() if n >= min_frequency),
                    key=lambda c: (-chars[c], c))[:max_alphabet]
  allowed = set(alphabet)
  symbols = [([w[0]] + ["##" + c for c in w[1:]], n) for w, n in sorted(words.items())
             if set(w) <= allowed]
  tokens = list(SPECIAL_TOKENS) + alphabet + ["##" + c for c in alphabet]
  if len(tokens) > vocab_size:
    raise ConfigError(f"config.data.tokenizer.vocab_size={vocab_size} is smaller than the "
                      f"{len(tokens)} characters and special tokens of the corpus; raise it")
  pair_count = collections.Counter()
  pair_words = collections.defaultdict(set)
  for i, (syms, n) in enumerate(symbols):
    for pair in itertools.pairwise(syms):
      pair_count[pair] += n
      pair_words[pair].add(i)
  heap = [(-n, pair) for pair, n in pair_count.items()]
  heapq.heapify(heap)
  known = set(tokens)
  while len(tokens) < vocab_size and heap:
    neg, pair = heapq.heappop(heap)
    if pair_count.get(pair) != -neg:
      continue  # stale entry
    if -neg < min_frequency:
      break
    merged = pair[0] + pair[1][2:]
    if merged not in known:
      tokens.append(merged)
      known.add(merged)
    changed = set()
    for i in sorted(pair_words.pop(pair)):
      syms, n = symbols[i]
      if pair not in itertools.pairwise(syms):
        continue
      out, j = [], 0
      while j < len(syms):
        if j + 1 < len(syms) and (syms[j], syms[j + 1]) == pair:
          out.append(merged)
          j += 2
        else:
          out.append(syms[j])
          j += 1
      for q in itertools.pairwise(syms):
        pair_count[q] -= n
        changed.add(q)
      for q in itertools.pairwise(out):
        pair_count[q] += n
        pair_words[q].add(i)
        changed.add(q)
      symbols[i] = (out, n)
    pair_count.pop(pair, None)
    changed.discard(pair)
    for q in sorted(changed):
      if pair_count[q] > 0:
        heapq.heappush(heap, (-pair_count[q], q))
  return tokens + [f"[unused{i}]" for i in range(vocab_size - len(tokens))]


def _read_texts(files: Sequence[str]) -> list[str]:
  return [read_user_text(resolve_path(path), "config.data.tokenizer.train_files")
          for path in files]


def cached_vocab(files: Sequence[str], vocab_size: int, lowercase: bool, data_dir: str) -> str:
  """Path of the vocab.txt trained on `files` (trained and cached on first use)."""
  texts = _read_texts(files)
  key = hashlib.sha256()
  for text in texts:
    key.update(hashlib.sha256(text.encode()).digest())
  key.update(f"{vocab_size}:{lowercase}".encode())
  path = os.path.join(data_dir, _CACHE, f"vocab-{key.hexdigest()[:16]}.txt")
  if not os.path.isfile(path):
    tokens = train_vocab(texts, vocab_size, lowercase=lowercase)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write("\n".join(tokens) + "\n")
    os.replace(tmp, path)  # atomic: concurrent writers write the same content
  return path


def vocab_file_size(path: str) -> int:
  """Entries (lines) of a vocab.txt: what `config.model.vocab_size` must be."""
  return len(user_text_lines(resolve_path(path), _VOCAB_KEY))


def vocab_is_uncased(path: str) -> bool:
  """Whether a vocab.txt has no upper-case tokens (special tokens aside): lowercase inputs."""
  lines = user_text_lines(resolve_path(path), _VOCAB_KEY)
  return not any(t.lower() != t for t in map(str.strip, lines) if not t.startswith("["))


def load_tokenizer(path: str, lowercase: bool) -> tuple[tokenizers.Tokenizer, Vocab]:
  """A BERT WordPiece tokenizer over vocab.txt `path` (or a `pkg://` name), and its special ids."""
  path = resolve_path(path)
  if not os.path.isfile(path):
    raise DataError(f"config.data.tokenizer.vocab: no file {path!r}; give a BERT vocab.txt "
                    "(one token per line) or leave it empty to train one")
  read_user_text(path, _VOCAB_KEY)  # a one-line error for bytes that are not UTF-8
  tok = tokenizers.BertWordPieceTokenizer(path, lowercase=lowercase)
  ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
  missing = [t for t, i in ids.items() if i is None]
  if missing:
    raise DataError(f"config.data.tokenizer.vocab: {path!r} lacks the special tokens {missing}")
  vocab = Vocab(path=path, size=tok.get_vocab_size(), pad_id=ids["[PAD]"],
                unk_id=ids["[UNK]"], cls_id=ids["[CLS]"], sep_id=ids["[SEP]"],
                mask_id=ids["[MASK]"])
  return tok, vocab


def hf_vocab(tok: HfTokenizer) -> Vocab:
  """The `Vocab` of a Hugging Face tokenizer: cls = bos, sep = eos (ends documents).

  Its `size` is the tokenizer's; a model's table may be larger (`exact=False`).
  """
  eos = tok.eos_id if tok.eos_id is not None else tok.pad_id
  return Vocab(path=tok.path, size=tok.size, pad_id=tok.pad_id,
               unk_id=tok.unk_id if tok.unk_id is not None else tok.pad_id,
               cls_id=tok.bos_id if tok.bos_id is not None else eos, sep_id=eos,
               mask_id=tok.pad_id, exact=False)


def make_tokenizer(
    tc: ml_collections.ConfigDict, default_train_files: Sequence[str], data_dir: str,
) -> tuple[tokenizers.Tokenizer, Vocab]:
  """The tokenizer `config.data.tokenizer` describes.

  Args:
    tc: `{vocab, vocab_size, lowercase, train_files}` and, in configs that have it,
      `path`: a Hugging Face tokenizer (model directory or tokenizer.json) wins; else
      `vocab` (a vocab.txt path), else a vocabulary of `vocab_size` trained on
      `train_files` (or on `default_train_files` when empty).
    default_train_files: text files to train on when `tc.train_files` is empty.
    data_dir: where trained vocabularies are cached.
  """
  if tc.get("path", ""):
    tok = load_hf_tokenizer(tc.path)
    return tok.tokenizer, hf_vocab(tok)
  path = tc.get("vocab", "")
  if not path:
    files = list(tc.get("train_files", ())) or list(default_train_files)
    path = cached_vocab(files, int(tc.vocab_size), bool(tc.lowercase), data_dir)
  return load_tokenizer(path, bool(tc.lowercase))
