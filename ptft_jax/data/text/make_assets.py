"""Regenerates the text shipped in `assets/` (run once by maintainers; not at run time).

  python -m ptft_jax.data.text.make_assets

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
"""

import json
import os
import re

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
  rng = np.random.default_rng(seed)
  seen, rows = set(), []
  while len(rows) < sum(SENTIMENT_SIZES.values()):
    text, label = _review(rng)
    if text not in seen:
      seen.add(text)
      rows.append({"text": text, "label": label})
  out, start = {}, 0
  for split, n in SENTIMENT_SIZES.items():
    out[split], start = rows[start:start + n], start + n
  return out


def main():
  path = sources.CORPUS_FILE
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(corpus_text())
  for split, rows in sentiment_examples().items():
    path = sources.example_path("sentiment", split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  print(f"wrote {sources.ASSETS}")


if __name__ == "__main__":
  main()
