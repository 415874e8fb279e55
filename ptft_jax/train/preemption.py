"""Preemption: save at the current step, wait for the save, exit 0.

Single host: a SIGTERM handler (installed by the CLI, or by `watch()`) sets a
flag and does nothing else; the train loop checks the flag between steps (and
between eval batches) and saves there. Saving from inside the handler would run
in the middle of whatever the main thread was doing (a jitted step, an Orbax
commit), so it is never done. Library calls leave SIGTERM alone unless asked.

Multi-host: JAX's preemption sync point (`jax.distributed.initialize` starts its
preemption notifier, which owns SIGTERM) tells every process at the same step, so
all of them save the same step together. If that service is off
(`jax_enable_preemption_service=False`), `check_multihost()` says so in one
warning line at start and gives SIGTERM back its default action (the process
ends; the run resumes from its latest periodic checkpoint), instead of a check
that quietly never fires.
"""

import contextlib
import signal
import sys
import threading

import jax
from jax._src import distributed
from jax.experimental import multihost_utils

_requested = threading.Event()


class Preempted(Exception):  # noqa: N818 -- not an error: the CLIs exit 0
  """Raised by the loop after it saved `step` because preemption was requested."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"preempted: saved step {step} in {directory}; run the same command "
                     "to resume")
    self.step = step


def _on_sigterm(signum, frame):
  del signum, frame
  _requested.set()


def request():
  """Asks the running loop to save and stop (what SIGTERM does)."""
  _requested.set()


def requested() -> bool:
  """Whether this process was asked to stop (SIGTERM or `request()`)."""
  return _requested.is_set()


def install(*, early: bool = False) -> bool:
  """Installs the SIGTERM flag handler; returns True if it was not installed before.

  Only in a single-process run and from the main thread (Python delivers signals
  there); with several processes JAX's own preemption notifier keeps SIGTERM.
  `early=True` (a CLI, before JAX starts) skips asking JAX for the process count:
  a later `jax.distributed.initialize` installs its notifier over this handler.
  """
  if threading.current_thread() is not threading.main_thread():
    return False
  if not early and jax.process_count() > 1:
    return False
  if signal.getsignal(signal.SIGTERM) is _on_sigterm:
    return False
  signal.signal(signal.SIGTERM, _on_sigterm)
  return True


def clear():
  """Forgets a request (the loop calls it once it saved and raises `Preempted`)."""
  _requested.clear()


@contextlib.contextmanager
def watch(*, early: bool = False):
  """Inside, SIGTERM is a request to save and stop; the old handler comes back after.

  The CLI runs everything inside it; library code that wants the same (a notebook,
  a custom launcher) wraps its `train_and_evaluate` call. `early`: see `install`.
  """
  previous = signal.getsignal(signal.SIGTERM)
  installed = install(early=early)
  try:
    yield
  finally:
    if installed:
      signal.signal(signal.SIGTERM, previous)
      _requested.clear()


_UNAVAILABLE = ("warning: the preemption check cannot run: JAX's preemption service is off "
                "(jax_enable_preemption_service=False); SIGTERM ends this process without "
                "saving, and the same command resumes from the latest periodic checkpoint")
_multihost_unavailable = False  # set by check_multihost(): should_stop is then always False


def multihost_available() -> bool:
  """Whether JAX's preemption sync point can run (trivially True in a single process)."""
  if distributed.global_state.client is None:
    return True  # one process: the SIGTERM flag handler serves
  return distributed.global_state.preemption_sync_manager is not None


def check_multihost() -> bool:
  """After `jax.distributed.initialize`: whether preemption can be served; warns if not.

  When it cannot, prints one warning line (`_UNAVAILABLE`) to stderr and, if the
  CLI's flag handler holds SIGTERM, restores the default action so that a SIGTERM
  still ends the process (a flag nobody reads would make it ignore the signal).
  """
  global _multihost_unavailable
  if multihost_available():
    _multihost_unavailable = False
    return True
  _multihost_unavailable = True
  print(_UNAVAILABLE, file=sys.stderr, flush=True)
  if (threading.current_thread() is threading.main_thread()
      and signal.getsignal(signal.SIGTERM) is _on_sigterm):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  return False


def should_stop(step: int) -> bool:
  """True when the loop must save `step` and exit.

  Call it once per step on every process: with several processes it is JAX's
  preemption sync point (a collective agreement on the step to save). If the
  sync point cannot run, that was said at start (`check_multihost`) and this is
  False; a failure nobody was told about raises.
  """
  if jax.process_count() > 1:
    if _multihost_unavailable:
      return False
    if not multihost_available():
      check_multihost()  # a library caller that skipped it still gets the warning, once
      return False
    return multihost_utils.reached_preemption_sync_point(step)
  return _requested.is_set()
