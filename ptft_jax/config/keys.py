"""Dotted config keys: does a config have one, and which key did a typo mean.

Light on purpose (ml_collections and difflib only): the CLI asks before it imports jax.
"""

import difflib

import ml_collections


def flat_keys(config: ml_collections.ConfigDict, prefix: str = ""):
  """Every leaf key of `config`, dotted ("optim.lr", "optim.strategy.name", ...)."""
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from flat_keys(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}"


def has_key(config: ml_collections.ConfigDict, dotted: str) -> bool:
  """Whether `config` has the (leaf or nested) key `dotted`, e.g. "optim.lr"."""
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def closest_key(config: ml_collections.ConfigDict, dotted: str) -> str:
  """The key of `config` a mistyped `dotted` most likely meant ("optim.lrr" -> "optim.lr"), or ''.

  The whole dotted key first, then its last component among the last components.
  """
  keys = list(flat_keys(config))
  close = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.6)
  if not close:
    last = dotted.split(".")[-1]
    close = [k for k in keys if k.split(".")[-1] == last][:1] or difflib.get_close_matches(
        last, [k.split(".")[-1] for k in keys], n=1)
    close = [k for k in keys if close and k.split(".")[-1] == close[0].split(".")[-1]][:1]
  return close[0] if close else ""


def suggest_key(config: ml_collections.ConfigDict, dotted: str) -> str:
  """'; did you mean 'optim.lr'?' for a mistyped dotted key, or ''."""
  key = closest_key(config, dotted)
  return f"; did you mean {key!r}?" if key else ""
