"""Regenerates the text shipped in `assets/` (run once by maintainers; not at run time).

  python -m ptft_jax.data.text.make_assets          # everything
  python -m ptft_jax.data.text.make_assets sft      # only assets/sft_tiny
  python -m ptft_jax.data.text.make_assets ragged   # only assets/reviews_ragged

assets/corpus/python_reference.txt
  The prose of the Python Language Reference help topics that ship with
  CPython 3.11 (`pydoc_data.topics`): grammar and code blocks dropped, markup
  removed, one sentence per line; a document is a run of paragraphs of one
  section with 4 sentences or more. Python
  Software Foundation License Version 2 (assets/corpus/LICENSE).
assets/sentiment/{train,validation,test}.jsonl
  Short reviews written from templates and word lists in this file, labeled
  "positive" / "negative". Some negate ("was not dreadful"), contrast
  ("Although X was dull, Y was superb") or close with a verdict, so word
  counting alone does not solve them. Deterministic (fixed seed).
assets/reviews_ragged/{train,validation,test}.jsonl
  Reviews at a realistic, ragged length: each review above (its sentences kept in
  order) set among 0 to ~12 neighbouring sentences of one corpus document, so a text
  runs from ~10 to ~230 WordPiece tokens with most of them short (lognormal number of
  context sentences). The label is the review's. 2000 / 300 / 500, fixed seed. The
  length-bucket benchmark (`finetune_text_e2e`, configs/ragged_text.py) trains on it.
assets/sft_tiny/{train,validation,test}.jsonl
  A tiny instruction set, {"prompt": ..., "response": ...} per line, 2000 / 200 / 200,
  five templated tasks in turn with answers checkable by exact match:
    Reverse the letters: q n h i b -> b i h n q     Uppercase: a e v -> A E V
    Sort: 9 5 6 9 -> 5 6 9 9                        Largest: 6 5 5 9 2 -> 9
    Add 16 and 6. -> 22
  Every prompt occurs once in all three files (held-out prompts are new). Fixed seed.
assets/sft_tiny/{tokenizer.json,tokenizer_config.json,generation_config.json}
  A byte-level BPE tokenizer.json (vocab 400; <|pad|> 0, <|bos|> 1, <|eos|> 2,
  <|im_start|> 3, <|im_end|> 4) trained with `tokenizers` on the train split as the
  chat template renders it; tokenizer_config.json with those special tokens and a
  ChatML chat template (bos, then <|im_start|>role\ncontent<|im_end|>\n per message);
  generation_config.json: generation ends at <|eos|> or <|im_end|>. The directory is
  laid out like a Hugging Face model directory, so `load_hf_tokenizer("pkg://sft_tiny")`
  and transformers' AutoTokenizer both read it.
"""

import json
import os
import re
import sys

import numpy as np

from ptft_jax.data.text import sources

_HEADING = re.compile(r"^[*=\-~^\"]{3,}$")


def _sections(text: str) -> list[list[list[str]]]:
  """A help topic -> sections -> paragraphs -> lines (headings dropped)."""
  sections, paragraphs, para = [], [], []
  for line in text.split("\n"):
    if _HEADING.match(line.strip()):
      para = para[:-1]  # the heading's title line
      paragraphs += [para] if para else []
      sections += [paragraphs] if paragraphs else []
      paragraphs, para = [], []
    elif not line.strip():
      paragraphs += [para] if para else []
      para = []
    else:
      para.append(line)
  paragraphs += [para] if para else []
  return sections + ([paragraphs] if paragraphs else [])


def _prose(paragraph: list[str]) -> str | None:
  """A paragraph's text, or None for code, grammar rules and tables."""
  if paragraph[0].startswith(("   ", ">>>", "|", "+-")):
    return None
  text = " ".join(line.strip() for line in paragraph).replace("*", "")
  text = re.sub(r"^\s*[-•]\s+", "", " ".join(text.split()))
  if len(text) < 20 or not re.search(r"[a-z]{3}", text):
    return None
  return text if re.search(r"[.!?][\"')\]]?$", text) else text.rstrip(":;,") + "."


def corpus_text() -> str:
  """The shipped corpus: documents separated by blank lines, one sentence per line."""
  import pydoc_data.topics

  docs, seen = [], set()
  for topic in pydoc_data.topics.topics.values():
    for section in _sections(topic):
      doc = []  # consecutive paragraphs of a section, until 4 sentences or more
      for paragraph in filter(None, map(_prose, section)):
        doc += [s for s in sources.split_sentences(paragraph) if s not in seen]
        seen.update(doc)
        if len(doc) >= 4:
          docs.append(doc)
          doc = []
      if len(doc) >= 2:
        docs.append(doc)
  # As `sources.split_documents` will read them back (a fixed point of the splitter).
  docs = [sources.split_sentences(" ".join(doc)) for doc in docs]
  return "\n\n".join("\n".join(doc) for doc in docs) + "\n"


_SUBJECTS = {
    "film": ["the film", "the movie", "the plot", "the acting", "the lead actor", "the script",
             "the soundtrack", "the ending", "the dialogue", "the camera work", "the pacing",
             "the cast", "the story", "the special effects", "the opening scene"],
    "restaurant": ["the food", "the service", "the pasta", "the soup", "the dessert",
                   "our waiter", "the atmosphere", "the menu", "the steak", "the coffee",
                   "the kitchen staff", "the wine list", "the bread", "the curry"],
    "product": ["the battery", "the screen", "the keyboard", "this blender", "the headphones",
                "the charger", "the camera", "the build quality", "the speaker", "the app",
                "the packaging", "this vacuum cleaner", "the manual", "the remote"],
    "hotel": ["the room", "the front desk", "the breakfast", "the view", "the bed", "the pool",
              "the location", "the bathroom", "the check-in", "the lobby", "the shuttle"],
    "book": ["the book", "the novel", "the characters", "the prose", "the first chapter",
             "the twist", "the author's style", "the translation", "the narrator",
             "the final chapter"],
}
_GOOD = ["excellent", "wonderful", "superb", "great", "fantastic", "outstanding", "impressive",
         "lovely", "terrific", "flawless", "marvelous", "enjoyable", "pleasant", "remarkable",
         "splendid", "exceptional", "stunning", "brilliant", "delightful", "first-rate",
         "top-notch", "perfect", "solid", "fabulous", "amazing", "memorable", "admirable",
         "phenomenal", "exquisite", "charming", "satisfying", "refreshing", "superior",
         "wonderful", "glorious", "dazzling", "sublime", "magnificent", "praiseworthy",
         "commendable", "gorgeous", "pleasing", "fine", "likeable", "uplifting"]
_BAD = ["terrible", "awful", "dreadful", "disappointing", "mediocre", "horrible", "poor",
        "lousy", "abysmal", "atrocious", "appalling", "dismal", "pathetic", "subpar", "shoddy",
        "unbearable", "frustrating", "annoying", "forgettable", "underwhelming", "miserable",
        "inferior", "dire", "lackluster", "bland", "tedious", "sloppy", "unpleasant",
        "woeful", "deplorable", "laughable", "infuriating", "tiresome", "dull", "clumsy",
        "flimsy", "painful", "careless", "wretched", "grim", "second-rate", "dismaying",
        "irritating", "hopeless", "unsatisfying"]
_ADVERBS = ["", "", "really", "truly", "absolutely", "quite", "remarkably", "genuinely",
            "incredibly", "surprisingly", "simply", "utterly", "thoroughly", "rather"]
_VERDICTS = {
    1: ["I would happily recommend it.", "Worth every penny.", "I will definitely be back.",
        "I loved every minute of it.", "Five stars from me.", "Highly recommended.",
        "I would gladly do it all again.", "A real pleasure from start to finish.",
        "It exceeded my expectations.", "I have already told my friends about it."],
    0: ["I would not recommend it to anyone.", "What a waste of money.",
        "I will never go back.", "I regret every minute of it.", "One star is generous.",
        "Avoid it if you can.", "I asked for a refund.", "It fell far short of my hopes.",
        "Never again.", "I warned my friends to stay away."],
}
_OPENERS = ["", "", "", "Honestly, ", "To be fair, ", "Overall, ", "In my opinion, ",
            "Frankly, ", "I have to say that "]


def _review(rng: np.random.Generator) -> tuple[str, str]:
  pick = lambda xs: xs[int(rng.integers(len(xs)))]
  label = int(rng.integers(2))
  subjects = _SUBJECTS[pick(sorted(_SUBJECTS))]
  words = {1: _GOOD, 0: _BAD}
  adj = lambda polarity: " ".join(filter(None, [pick(_ADVERBS), pick(words[polarity])]))
  cap = lambda s: s[0].upper() + s[1:]

  def claim(polarity: int) -> str:
    subject = pick(subjects)
    kind = int(rng.integers(5))
    if kind == 0:
      return cap(f"{pick(_OPENERS)}{subject} was {adj(polarity)}.")
    if kind == 1:
      return f"I thought {subject} was {adj(polarity)}."
    if kind == 2:  # negation of the opposite
      return cap(f"{pick(_OPENERS)}{subject} was not {pick(words[1 - polarity])} at all.")
    if kind == 3:  # contrast: the main clause carries the sentiment
      other = pick([s for s in subjects if s != subject])
      return f"Although {other} was {adj(1 - polarity)}, {subject} was {adj(polarity)}."
    return f"I found {subject} {adj(polarity)}."

  sentences = [claim(label) for _ in range(int(rng.integers(1, 3)))]
  if rng.random() < 0.3:
    downside = "downside" if label else "bright spot"
    extra = f"The only {downside} was that {pick(subjects)} was {pick(words[1 - label])}."
    sentences.insert(int(rng.integers(len(sentences) + 1)), extra)
  if rng.random() < 0.5:
    sentences.append(pick(_VERDICTS[label]))
  return " ".join(sentences), ("positive" if label else "negative")


SENTIMENT_SIZES = {"train": 400, "validation": 150, "test": 400}


def sentiment_examples(seed: int = 20260103) -> dict[str, list[dict[str, str]]]:
  """Distinct generated reviews, split into SENTIMENT_SIZES."""
  return _distinct_splits(_review, np.random.default_rng(seed), SENTIMENT_SIZES)


def _distinct_splits(make, rng: np.random.Generator,
                     sizes: dict[str, int]) -> dict[str, list[dict[str, str]]]:
  """`make(rng) -> (text, label)` until there are enough distinct texts, cut into `sizes`."""
  seen, rows = set(), []
  while len(rows) < sum(sizes.values()):
    text, label = make(rng)
    if text not in seen:
      seen.add(text)
      rows.append({"text": text, "label": label})
  out, start = {}, 0
  for split, n in sizes.items():
    out[split], start = rows[start:start + n], start + n
  return out


RAGGED_SIZES = {"train": 2000, "validation": 300, "test": 500}
RAGGED_MAX_CHARS = 900  # ~< 256 WordPiece tokens with the review: nothing is truncated


def ragged_review_examples(seed: int = 20260105) -> dict[str, list[dict[str, str]]]:
  """Distinct reviews set among corpus sentences (see the module docstring), split."""
  with open(sources.CORPUS_FILE, encoding="utf-8") as f:
    docs = sources.split_documents(f.read())

  def ragged_review(rng: np.random.Generator) -> tuple[str, str]:
    review, label = _review(rng)
    context = int(min(rng.lognormal(0.3, 1.1), 12))  # sentences of surrounding prose
    doc = docs[int(rng.integers(len(docs)))]
    start = int(rng.integers(max(len(doc) - context, 0) + 1))
    prose = doc[start:start + context]
    while prose and len(" ".join(prose + [review])) > RAGGED_MAX_CHARS:
      prose = prose[:-1]
    at = int(rng.integers(len(prose) + 1))
    return " ".join(prose[:at] + [review] + prose[at:]), label

  return _distinct_splits(ragged_review, np.random.default_rng(seed), RAGGED_SIZES)


SFT_SIZES = {"train": 2000, "validation": 200, "test": 200}
SFT_TASKS = ("reverse", "uppercase", "sort", "largest", "add")
SFT_SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>")
SFT_VOCAB = 400
CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _instruction(rng: np.random.Generator, kind: str) -> tuple[str, str]:
  """One (prompt, response) of a task in SFT_TASKS."""
  letters = lambda: [_LETTERS[int(i)] for i in rng.integers(26, size=int(rng.integers(3, 6)))]
  digits = lambda: [str(int(d)) for d in rng.integers(10, size=int(rng.integers(3, 6)))]
  if kind == "reverse":
    word = letters()
    return f"Reverse the letters: {' '.join(word)}", " ".join(reversed(word))
  if kind == "uppercase":
    word = letters()
    return f"Uppercase: {' '.join(word)}", " ".join(word).upper()
  if kind == "sort":
    ds = digits()
    return f"Sort: {' '.join(ds)}", " ".join(sorted(ds))
  if kind == "largest":
    ds = digits()
    return f"Largest: {' '.join(ds)}", max(ds)
  a, b = int(rng.integers(100)), int(rng.integers(10))
  return f"Add {a} and {b}.", str(a + b)


def sft_examples(seed: int = 20260104) -> dict[str, list[dict[str, str]]]:
  """Distinct prompts, the tasks in turn, split into SFT_SIZES."""
  rng = np.random.default_rng(seed)
  seen, rows = set(), []
  while len(rows) < sum(SFT_SIZES.values()):
    prompt, response = _instruction(rng, SFT_TASKS[len(rows) % len(SFT_TASKS)])
    if prompt not in seen:
      seen.add(prompt)
      rows.append({"prompt": prompt, "response": response})
  out, start = {}, 0
  for split, n in SFT_SIZES.items():
    out[split], start = rows[start:start + n], start + n
  return out


def sft_tokenizer(train: list[dict[str, str]]):
  """The byte-level BPE of assets/sft_tiny, trained on `train` in chat form."""
  import tokenizers

  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=SFT_VOCAB, special_tokens=list(SFT_SPECIALS), show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  texts = [f"<|im_start|>user\n{r['prompt']}<|im_end|>\n<|im_start|>assistant\n"
           f"{r['response']}<|im_end|>\n" for r in train]
  tok.train_from_iterator(texts, trainer)
  assert [tok.token_to_id(t) for t in SFT_SPECIALS] == list(range(len(SFT_SPECIALS)))
  return tok


def write_sft_assets():
  """assets/sft_tiny: the instruction set and its tokenizer directory."""
  out = os.path.join(sources.ASSETS, "sft_tiny")
  splits = sft_examples()
  os.makedirs(out, exist_ok=True)
  for split, rows in splits.items():
    with open(os.path.join(out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  tok = sft_tokenizer(splits["train"])
  tok.save(os.path.join(out, "tokenizer.json"))
  ids = {t: i for i, t in enumerate(SFT_SPECIALS)}
  files = {
      "tokenizer_config.json": {
          "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>",
          "eos_token": "<|eos|>", "pad_token": "<|pad|>", "model_max_length": 256,
          "chat_template": CHATML},
      "generation_config.json": {
          "bos_token_id": ids["<|bos|>"], "pad_token_id": ids["<|pad|>"],
          "eos_token_id": [ids["<|eos|>"], ids["<|im_end|>"]]},
  }
  for name, value in files.items():
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
      f.write(json.dumps(value, indent=2) + "\n")


def write_labeled_assets(name: str, splits: dict[str, list[dict[str, str]]]):
  """assets/<name>/<split>.jsonl, one {"text", "label"} object per line."""
  for split, rows in splits.items():
    path = sources.example_path(name, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)


def main():
  if sys.argv[1:] == ["ragged"]:
    write_labeled_assets("reviews_ragged", ragged_review_examples())
    print(f"wrote {os.path.dirname(sources.example_path('reviews_ragged', 'train'))}")
    return
  if sys.argv[1:] == ["sft"]:
    write_sft_assets()
    print(f"wrote {os.path.join(sources.ASSETS, 'sft_tiny')}")
    return
  path = sources.CORPUS_FILE
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(corpus_text())
  write_labeled_assets("sentiment", sentiment_examples())
  write_labeled_assets("reviews_ragged", ragged_review_examples())
  write_sft_assets()
  print(f"wrote {sources.ASSETS}")


if __name__ == "__main__":
  main()
