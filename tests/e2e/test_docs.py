"""The README and docs/ stay true: snippets run, links resolve, nothing is written twice.

Every ```python block preceded by `<!-- snippet: NAME -->` in README.md or docs/*.md runs
as printed (keep such snippets cheap: < 20 s each). The README starts with the two set-up
commands (`.ci/run` runs the second) and stays short; each prose paragraph lives in one
file only; relative links point at files and headings that exist; every config's
docstring gives its command and its expected result; no tracked file holds a
machine-specific absolute path.
"""

import ast
import itertools
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIS_FILE = os.path.relpath(os.path.abspath(__file__), REPO).replace(os.sep, "/")
README = "README.md"
MAX_README_LINES = 200
SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\s*```python\n(.*?)```", re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Built from pieces so that this file does not match its own scan.
MACHINE_PATHS = tuple("/" + d + "/" for d in ("work", "home", "root", "Users"))


def _read(rel: str) -> str:
  with open(os.path.join(REPO, rel), encoding="utf-8") as f:
    return f.read()


def _docs() -> list[str]:
  folder = os.path.join(REPO, "docs")
  names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
  return [f"docs/{n}" for n in names if n.endswith(".md")]


def _markdown_files() -> list[str]:
  return [README, *_docs()]


def _line_of(text: str, offset: int) -> int:
  return text.count("\n", 0, offset) + 1


def _snippets() -> list[tuple[str, str, int, str]]:
  """(name, file, line, code) of every marked snippet."""
  out = []
  for rel in _markdown_files():
    text = _read(rel)
    for m in SNIPPET.finditer(text):
      out.append((m.group(1), rel, _line_of(text, m.start()), m.group(2)))
  return out


def _prose_lines(text: str):
  """(line number, line) outside fenced code blocks; fence lines come back as ""."""
  fenced = False
  for i, line in enumerate(text.splitlines(), start=1):
    if line.lstrip().startswith("```"):
      fenced = not fenced
      yield i, ""
    else:
      yield i, "" if fenced else line


def _paragraphs(text: str) -> list[tuple[int, str]]:
  """(first line, whitespace-normalized text) of each prose paragraph of >= 2 lines.

  Tables, headings, HTML comments and code blocks are not prose.
  """
  out = []
  for blank, group in itertools.groupby(_prose_lines(text), key=lambda x: not x[1].strip()):
    if blank:
      continue
    lines = list(group)
    if len(lines) < 2 or any(ln.lstrip().startswith(("|", "#", "<!--")) for _, ln in lines):
      continue
    out.append((lines[0][0], " ".join(" ".join(ln for _, ln in lines).split())))
  return out


def _normalized(text: str) -> str:
  return " ".join(text.split())


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
  return {_slug(ln.lstrip("#")) for _, ln in _prose_lines(text) if re.match(r"#{1,6} ", ln)}


@pytest.mark.parametrize(
    ("name", "rel", "line", "code"), _snippets(), ids=[s[0] for s in _snippets()])
def test_snippet_runs(name, rel, line, code, tmp_path):
  script = tmp_path / f"{name}.py"
  script.write_text(code)
  # One CPU device: a 300-step loop over 8 *simulated* devices hangs now and then inside
  # XLA:CPU's executable launch (seen 1 run in 5 on a loaded 2-core machine; docs/testing.md);
  # the sharded step is tested in-process (tests/unit/test_sharding.py).
  env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                     timeout=300, env=env)
  assert r.returncode == 0, f"{rel}:{line}: snippet {name!r} failed:\n{r.stderr[-3000:]}"
  if name == "custom-loop":
    assert len(code.strip().splitlines()) < 40, f"{rel}:{line}: the custom loop grew past 40 lines"
    found = re.search(r"test accuracy (\S+),", r.stdout)
    assert found, f"{rel}:{line}: custom-loop printed no test accuracy:\n{r.stdout[-2000:]}"
    accuracy = float(found.group(1))
    assert accuracy > 0.85, f"{rel}:{line}: custom-loop test accuracy {accuracy} <= 0.85"


def test_snippets_are_there_and_named_once():
  names = [s[0] for s in _snippets()]
  assert "custom-loop" in names, "no `<!-- snippet: custom-loop -->` in README.md or docs/*.md"
  twice = sorted({n for n in names if names.count(n) > 1})
  assert not twice, f"snippet names used more than once: {twice}"


def test_readme_starts_with_the_two_setup_commands_and_ci_runs_the_second():
  text = _read(README)
  first_block = re.search(r"```bash\n(.*?)```", text, re.S)
  assert first_block, "README.md: no ```bash block with the set-up commands"
  assert text.index(first_block.group(0)) < text.find("\n## "), (
      "README.md: the set-up commands must come before the first section")
  lines = [ln for ln in first_block.group(1).splitlines()
           if ln.startswith("bash launch/setup_env.sh")]
  assert len(lines) >= 2, f"README.md: the first block has {len(lines)} set-up lines, not 2"
  assert "ptft_jax.main --config=configs/quickstart.py" in lines[0], f"README.md: {lines[0]!r}"
  assert "pytest" in lines[1], f"README.md: {lines[1]!r}"
  assert lines[1] in _read(".ci/run"), f".ci/run does not run the README's line {lines[1]!r}"


def test_readme_is_short():
  n = len(_read(README).splitlines())
  assert n <= MAX_README_LINES, f"README.md: {n} lines (at most {MAX_README_LINES}); move to docs/"


def test_no_readme_paragraph_is_repeated_in_docs():
  docs = {rel: _normalized(_read(rel)) for rel in _docs()}
  repeated = [f"README.md:{line} is repeated in {rel}: {para[:80]!r}"
              for line, para in _paragraphs(_read(README))
              for rel, body in docs.items() if para in body]
  assert not repeated, "\n".join(repeated)


def test_no_paragraph_appears_in_two_docs():
  docs = _docs()
  bodies = {rel: _normalized(_read(rel)) for rel in docs}
  repeated = [f"{a}:{line} is repeated in {b}: {para[:80]!r}"
              for a in docs for line, para in _paragraphs(_read(a))
              for b in docs if b != a and para in bodies[b]]
  assert not repeated, "\n".join(repeated)


def test_relative_links_point_to_existing_files_and_headings():
  broken = []
  for rel in _markdown_files():
    for i, line in _prose_lines(_read(rel)):
      for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
          continue
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(rel), path)) if path else rel
        if not os.path.exists(os.path.join(REPO, dest)):
          broken.append(f"{rel}:{i}: link to {target!r}: {dest} does not exist")
        elif anchor and dest.endswith(".md") and anchor not in _anchors(_read(dest)):
          broken.append(f"{rel}:{i}: link to {target!r}: {dest} has no heading #{anchor}")
  assert not broken, "\n".join(broken)


def test_every_config_docstring_gives_its_command_and_expected_result():
  folder = os.path.join(REPO, "configs")
  missing = []
  for name in sorted(os.listdir(folder)):
    if not name.endswith(".py") or name in ("__init__.py", "common.py"):
      continue
    doc = ast.get_docstring(ast.parse(_read(f"configs/{name}"))) or ""
    for needed in (f"python -m ptft_jax.main --config=configs/{name}", "Expected"):
      if needed not in doc:
        missing.append(f"configs/{name}: docstring lacks {needed!r}")
  assert not missing, "\n".join(missing)


def _tracked_files() -> list[str]:
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout")
  return [f for f in out.stdout.decode().split("\0") if f]


def test_no_tracked_file_holds_a_machine_specific_path():
  found = []
  for rel in _tracked_files():
    full = os.path.join(REPO, rel)
    if rel == THIS_FILE or rel.startswith("tests/fixtures/") or not os.path.isfile(full):
      continue
    with open(full, "rb") as f:
      data = f.read()
    if b"\0" in data[:8192]:
      continue  # binary
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError:
      continue
    for i, line in enumerate(text.splitlines(), start=1):
      for p in MACHINE_PATHS:
        if p in line:
          found.append(f"{rel}:{i}: machine-specific path {p!r}: {line.strip()[:100]}")
  assert not found, "\n".join(found)
