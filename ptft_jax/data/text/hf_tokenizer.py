"""Hugging Face tokenizers: a model directory's `tokenizer.json`, special tokens, chat template.

`load_hf_tokenizer(path)` takes a model directory (or a `tokenizer.json` file, or a
shipped `pkg://` name) and reads, beside `tokenizer.json`:

  tokenizer_config.json    bos_token / eos_token / pad_token / unk_token (strings or
                           AddedToken dicts) and `chat_template` (a string, or a list of
                           {"name", "template"}: the one named "default")
  special_tokens_map.json  the same token strings (tokenizer_config.json wins)
  chat_template.jinja      the template, when tokenizer_config.json has none (newer saves)
  config.json, generation_config.json
                           bos_token_id / eos_token_id (an int or a list) / pad_token_id,
                           for what the token strings leave open; every eos id of
                           generation_config.json ends generation (`stop_ids`)

A chat template is rendered as transformers' `apply_chat_template` renders it: a
sandboxed Jinja environment (trim_blocks, lstrip_blocks, loop controls, a `tojson`
that does not escape HTML, `raise_exception`, `strftime_now`; `{% generation %}`
blocks render their body) given `messages`, `add_generation_prompt` and the special
token strings (`bos_token`, `eos_token`, `pad_token`, `unk_token`); the text is then
tokenized without adding special tokens (the template writes them).
"""

import dataclasses
import datetime
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import tokenizers

from ptft_jax.data.sources import read_user_text
from ptft_jax.data.text.sources import resolve_path
from ptft_jax.errors import DataError
from ptft_jax.utils import is_dir, is_file

TOKENIZER_FILE = "tokenizer.json"
_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclasses.dataclass(frozen=True, eq=False)
class HfTokenizer:
  """A `tokenizers.Tokenizer` with the special tokens and chat template of its model.

  Attributes:
    tokenizer: the fast tokenizer from tokenizer.json.
    path: that tokenizer.json.
    bos_id, eos_id, unk_id: special ids, None when the model has none.
    pad_id: padding id (the pad token, else eos, else 0); padding is masked anyway.
    stop_ids: ids that end generation (eos and generation_config.json's eos_token_id).
    tokens: special token strings by name ("bos_token", ...) for templates.
    chat_template: the Jinja chat template, or None.
    prefix_ids: ids the tokenizer puts in front of a text when asked to add special
      tokens (e.g. [bos] for Llama, [] for GPT-2 and Qwen2).
  """

  tokenizer: tokenizers.Tokenizer
  path: str
  bos_id: int | None
  eos_id: int | None
  pad_id: int
  unk_id: int | None
  stop_ids: tuple[int, ...]
  tokens: Mapping[str, str]
  chat_template: str | None
  prefix_ids: tuple[int, ...]

  @property
  def size(self) -> int:
    """Ids in use (added tokens included); a model's table may be larger."""
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added."""
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def render_chat(self, messages: Sequence[Mapping[str, Any]], *,
                  add_generation_prompt: bool = False) -> str:
    """The chat template applied to `messages` ([{"role", "content"}, ...]): text.

    Raises DataError when there is no template or the template raises (its message).
    """
    if self.chat_template is None:
      raise DataError(f"{self.path}: the tokenizer has no chat template (tokenizer_config.json "
                      "'chat_template'); 'messages' data needs one")
    import jinja2

    try:
      return _compiled(self.chat_template).render(
          messages=[dict(m) for m in messages], tools=None, documents=None,
          add_generation_prompt=add_generation_prompt, **self.tokens)
    except jinja2.TemplateError as e:
      raise DataError(f"{self.path}: the chat template failed: {e}") from None

  def chat_ids(self, messages: Sequence[Mapping[str, Any]], *,
               add_generation_prompt: bool = False) -> list[int]:
    """Token ids of `render_chat(...)`, as `apply_chat_template(tokenize=True)` gives them."""
    return self.encode(self.render_chat(messages, add_generation_prompt=add_generation_prompt))


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
  """A chat template compiled as transformers compiles it (sandboxed)."""
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (assistant-mask markers): renders the body."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise DataError(f"the chat template does not parse (line {e.lineno}: {e.message})") from None


def _read_json(path: str, what: str) -> dict:
  """A JSON object file, or {} when absent; one-line DataError when unreadable."""
  if not is_file(path):
    return {}
  try:
    value = json.loads(read_user_text(path, what))
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}) ({what})") from None
  if not isinstance(value, dict):
    raise DataError(f"{path}: expected a JSON object ({what})")
  return value


def _token_string(value: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def _ids(value: Any) -> list[int]:
  """An `*_token_id` field: an int, a list of ints, or null."""
  if isinstance(value, bool):
    return []
  if isinstance(value, int):
    return [value]
  if isinstance(value, list):
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
  return []


def _chat_template(folder: str, config: dict) -> str | None:
  template = config.get("chat_template")
  if isinstance(template, list):  # [{"name": ..., "template": ...}]: the default one
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  if isinstance(template, str) and template:
    return template
  path = os.path.join(folder, "chat_template.jinja")
  if is_file(path):
    return read_user_text(path, "chat template")
  saved = _read_json(os.path.join(folder, "chat_template.json"), "chat template")
  template = saved.get("chat_template")
  return template if isinstance(template, str) and template else None


def _prefix_ids(tok: tokenizers.Tokenizer) -> tuple[int, ...]:
  """Ids the post-processor puts before a text (e.g. Llama's bos)."""
  plain = tok.encode("a", add_special_tokens=False).ids
  full = tok.encode("a", add_special_tokens=True).ids
  for start in range(len(full) - len(plain) + 1):
    if full[start:start + len(plain)] == plain:
      return tuple(full[:start])
  return ()


def load_hf_tokenizer(path: str, key: str = "config.data.tokenizer.path") -> HfTokenizer:
  """The tokenizer of a Hugging Face model directory (or of a tokenizer.json file).

  Args:
    path: a directory holding tokenizer.json (and usually tokenizer_config.json), a
      tokenizer.json file (its directory's other files are read too), or a `pkg://` name.
    key: the config key that named `path` (for error messages).

  Raises DataError (one line naming `key` and the file) for a missing or malformed
  tokenizer.json and for special tokens the vocabulary lacks.
  """
  resolved = resolve_path(path)  # a local path, pkg:// name or gs:// URL (a gs:// run's copy)
  if is_dir(resolved):
    folder, file = resolved, os.path.join(resolved, TOKENIZER_FILE)
  else:
    folder, file = os.path.dirname(resolved), resolved
  if not is_file(file):
    where = f"no {TOKENIZER_FILE} in {resolved!r}" if is_dir(resolved) else (
        f"no file {resolved!r}")
    raise DataError(f"{key}: {where}; give a Hugging Face model directory or its "
                    f"{TOKENIZER_FILE}")
  text = read_user_text(file, key)
  try:
    tok = tokenizers.Tokenizer.from_str(text)
  except Exception as e:  # noqa: BLE001 -- tokenizers raises bare Exceptions
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f"{key}: {file!r} is not a tokenizers JSON file ({first})") from None

  config = _read_json(os.path.join(folder, "tokenizer_config.json"), key)
  special_map = _read_json(os.path.join(folder, "special_tokens_map.json"), key)
  model = _read_json(os.path.join(folder, "config.json"), key)
  generation = _read_json(os.path.join(folder, "generation_config.json"), key)

  tokens, ids = {}, {}
  for name in _TOKEN_KEYS:
    string = _token_string(config.get(name)) or _token_string(special_map.get(name))
    if string is not None:
      token_id = tok.token_to_id(string)
      if token_id is None:
        raise DataError(f"{key}: {name} {string!r} of {folder} is not in {file}")
      tokens[name], ids[name] = string, token_id
      continue
    fallback = _ids(model.get(f"{name}_id")) or _ids(generation.get(f"{name}_id"))
    if fallback:
      ids[name] = fallback[0]
      string = tok.id_to_token(fallback[0])
      if string is not None:
        tokens[name] = string
  eos = ids.get("eos_token")
  stops = [eos] if eos is not None else []
  stops += [i for i in _ids(generation.get("eos_token_id")) + _ids(model.get("eos_token_id"))
            if i not in stops]
  pad = ids.get("pad_token", eos if eos is not None else 0)
  return HfTokenizer(
      tokenizer=tok, path=file, bos_id=ids.get("bos_token"), eos_id=eos, pad_id=pad,
      unk_id=ids.get("unk_token"), stop_ids=tuple(stops), tokens=tokens,
      chat_template=_chat_template(folder, config), prefix_ids=_prefix_ids(tok))
