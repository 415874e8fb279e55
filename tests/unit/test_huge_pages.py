"""A `python -m ptft_jax...` command re-executes itself with glibc's huge-page tunable."""

import os
import platform
import subprocess
import sys

from ptft_jax import huge_pages


def test_only_ptft_jax_commands_are_recognized():
  py = "/usr/bin/python3"
  assert huge_pages.command_module([py, "-m", "ptft_jax.main", "--config=c.py"]) == "ptft_jax.main"
  assert huge_pages.command_module([py, "-u", "-m", "ptft_jax.bench"]) == "ptft_jax.bench"
  assert huge_pages.command_module([py, "-X", "importtime", "-W", "ignore", "-m",
                                    "ptft_jax.predict"]) == "ptft_jax.predict"
  assert huge_pages.command_module([py, "-m", "pytest", "tests"]) is None
  assert huge_pages.command_module([py, "script.py", "-m", "ptft_jax.main"]) is None
  assert huge_pages.command_module([py, "-c", "import ptft_jax"]) is None
  assert huge_pages.command_module([py]) is None


def test_the_tunable_joins_existing_ones_once_and_can_be_turned_off():
  add = huge_pages.environment_with_huge_pages
  assert add({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert add({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == (
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  assert add({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # the user's choice stays
  assert add({"PTFT_HUGE_PAGES": "0"}) is None


def test_a_command_runs_with_the_tunable_and_an_import_does_not(tmp_path):
  config = tmp_path / "env_config.py"
  config.write_text("import os\n\ndef get_config(arg=''):\n"
                    "  raise ValueError('tunables=' + os.environ.get('GLIBC_TUNABLES', ''))\n")
  command = [sys.executable, "-m", "ptft_jax.main", f"--config={config}",
             f"--workdir={tmp_path / 'run'}"]
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PTFT_HUGE_PAGES")}
  applies = (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
             and huge_pages._thp_available())
  result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 2  # the config's own error, one line, after the re-execution
  expected = "tunables=glibc.malloc.hugetlb=1" if applies else "tunables=\n"
  assert expected.strip() in result.stderr and result.stderr.count("tunables=") == 1
  off = subprocess.run(command, env={**env, "PTFT_HUGE_PAGES": "0"}, capture_output=True,
                       text=True, check=False)
  assert "tunables=\n" in off.stderr or off.stderr.rstrip().endswith("tunables=")
  plain = subprocess.run([sys.executable, "-c", "import os, ptft_jax; "
                          "print(os.environ.get('GLIBC_TUNABLES', 'unset'))"],
                         env=env, capture_output=True, text=True, check=True)
  assert plain.stdout.strip() == "unset"
