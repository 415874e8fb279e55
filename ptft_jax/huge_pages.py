"""Transparent huge pages for XLA:CPU's buffers: a command re-executes itself with glibc's
`glibc.malloc.hugetlb=1` tunable.

XLA:CPU allocates a step's temporaries afresh at every execution (1.2 GB for the bench's
MiniLM classification step). glibc serves allocations above 32 MB with newly mapped
memory, which the kernel faults in and zeroes 4 KB at a time, every step. With the
tunable, malloc asks for transparent huge pages (`madvise(MADV_HUGEPAGE)`) on what it maps,
and the faults come 2 MB at a time. Measured on the 2-core CPU (docs/performance.md): the
bench's classification step 1.39 -> 1.14-1.22 s and masked-LM step 1.62-1.65 -> 1.34-1.36
s; a 78 MB elementwise op 18.5 -> 5.4 ms; compile-bound commands (the quickstart, the
ragged-text fine-tune) and the PyTorch peer unchanged.

The dynamic loader reads the tunable when the process starts, so Python cannot set it
for itself: `python -m ptft_jax.<command>` re-executes itself once, before anything heavy
is imported (same PID, arguments and environment, plus the tunable). Only commands do:
`import ptft_jax` in a notebook, a library or a test never re-executes. Only on Linux
with glibc, and where transparent huge pages are not "never"; `PTFT_HUGE_PAGES=0` turns it
off.
"""

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_available() -> bool:
  """Transparent huge pages are "always" or "madvise" (the setting shows "[never]" when off)."""
  try:
    with open(THP_SETTING) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def command_module(argv: list[str]) -> str | None:
  """The `ptft_jax.*` module that `python -m` runs in `argv` (sys.orig_argv), else None."""
  i = 1
  while i < len(argv) - 1:
    arg = argv[i]
    if arg == "-m":
      module = argv[i + 1]
      return module if module == "ptft_jax" or module.startswith("ptft_jax.") else None
    if arg == "-c" or not arg.startswith("-"):  # code or a script: the rest is theirs
      return None
    i += 2 if arg in ("-X", "-W") else 1  # interpreter options that take a value
  return None


def environment_with_huge_pages(env: dict[str, str]) -> dict[str, str] | None:
  """`env` with the tunable added to GLIBC_TUNABLES, or None when there is nothing to do."""
  if env.get("PTFT_HUGE_PAGES", "1") == "0":
    return None
  tunables = env.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:  # set already (by us or by the user): keep it
    return None
  return {**env, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def reexec_with_huge_pages() -> None:
  """Re-executes this process (same arguments) with the tunable where it applies and is not
  set yet; returns otherwise. For measuring scripts (tools/profile_step.py) that must see
  what the commands see."""
  argv = getattr(sys, "orig_argv", [])
  env = environment_with_huge_pages(dict(os.environ))
  if (env is None or not argv or sys.platform != "linux" or platform.libc_ver()[0] != "glibc"
      or not _thp_available()):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env)


def reexec_command_with_huge_pages() -> None:
  """`reexec_with_huge_pages()` for a `python -m ptft_jax...` command; nothing otherwise."""
  if command_module(getattr(sys, "orig_argv", [])) is not None:
    reexec_with_huge_pages()
