"""The README's functional-API example runs exactly as printed, and its setup lines are real."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


def test_custom_loop_snippet_runs_and_learns(tmp_path):
  block = re.search(r"<!-- snippet: custom-loop -->\s*```python\n(.*?)```", _readme(), re.S)
  assert block, "README lost its custom-loop snippet"
  code = block.group(1)
  assert len(code.strip().splitlines()) < 40
  script = tmp_path / "snippet.py"
  script.write_text(code)
  r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                     timeout=300, env={**os.environ, "PYTHONPATH": REPO})
  assert r.returncode == 0, r.stderr[-2000:]
  accuracy = float(re.search(r"test accuracy (\S+),", r.stdout).group(1))
  assert accuracy > 0.85  # 300 steps of a 1-hidden-layer MLP on the digits


def test_readme_starts_with_the_two_setup_commands_and_ci_runs_the_second():
  lines = [ln for ln in _readme().splitlines() if ln.startswith("bash launch/setup_env.sh")]
  assert len(lines) >= 2
  assert "ptft_jax.main --config=configs/quickstart.py" in lines[0]
  assert "pytest" in lines[1]
  with open(os.path.join(REPO, ".ci", "run")) as f:
    assert lines[1] in f.read()
