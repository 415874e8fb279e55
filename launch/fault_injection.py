r"""Fault injection: kill a training run at random moments, restart it, compare bitwise.

  python launch/fault_injection.py --trials 10 --out runs/faults.json

Runs one uninterrupted reference run, then `--trials` times: start the same command,
kill it (SIGKILL, or SIGTERM = preemption) at a random moment -- during start-up and
compilation, between steps, during an async checkpoint save or the deletion of an
old one, during evaluation -- restart it, maybe kill it again (1-3 kills per trial),
and finally let it finish. A trial passes when the final parameters are bitwise
equal to the reference run's and so is the final evaluation. Prints a table and
writes a JSON summary. Every command is the real CLI (`python -m ptft_jax.main`)
on 2 simulated CPU devices, so the data-parallel path is exercised too.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(workdir: str, steps: int) -> list[str]:
  # Frequent saves with keep=2 (so old steps are deleted as often) and periodic
  # evaluation: most random moments fall into a save, a deletion or an evaluation.
  return [sys.executable, "-m", "ptft_jax.main", "--config=configs/digits.py",
          f"--workdir={workdir}", f"--config.train.steps={steps}",
          "--config.model.hidden_sizes=(512, 512)", "--config.data.batch_size=64",
          "--config.train.checkpoint_every=3", "--config.train.keep=2",
          "--config.train.eval_every=10", "--config.train.log_every=1",
          "--config.train.tensorboard=False"]


def _env() -> dict:
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


class Run:
  """One process of the command; a thread drains stdout and notes the step lines."""

  def __init__(self, cmd: list[str]):
    self.proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    self.steps_seen: list[int] = []
    self.lines: list[str] = []
    self.step_event = threading.Condition()
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append(line)
      if line.startswith("step "):
        with self.step_event:
          self.steps_seen.append(int(line.split()[1].split("/")[0]))
          self.step_event.notify_all()
    with self.step_event:
      self.step_event.notify_all()

  def wait_for_step(self, step: int, timeout: float = 300) -> bool:
    """True once step `step` was logged; False if the process ended first."""
    deadline = time.time() + timeout
    with self.step_event:
      while not (self.steps_seen and self.steps_seen[-1] >= step):
        if self.proc.poll() is not None or time.time() > deadline:
          return False
        self.step_event.wait(0.05)
    return True

  def finish(self, timeout: float = 600) -> tuple[int, str]:
    _, err = self.proc.communicate(timeout=timeout)
    self.reader.join()
    return self.proc.returncode, err


def leftovers(workdir: str) -> list[str]:
  """Unfinished saves a kill left: tmp dirs, step dirs without their commit file."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return [n for n in os.listdir(directory)
          if ".orbax-checkpoint-tmp" in n or (
              n.isdigit() and not os.path.isfile(os.path.join(directory, n, "commit_success.txt")))]


def final_state(workdir: str) -> tuple[dict, dict]:
  from ptft_jax.train import checkpoint  # imported late: the parent needs jax only here

  params, _ = checkpoint.load_params(workdir)
  import jax

  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}
  with open(os.path.join(workdir, "eval_test.json")) as f:
    return flat, json.load(f)


def same(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
  pa, ea = a
  pb, eb = b
  return pa.keys() == pb.keys() and all(
      pa[k].dtype == pb[k].dtype and np.array_equal(pa[k], pb[k]) for k in pa) and ea == eb


def trial(index: int, root: str, steps: int, startup: float, duration: float,
          rng: random.Random) -> dict:
  workdir = os.path.join(root, f"trial_{index}")
  kills = []
  for _ in range(rng.randint(1, 3)):
    run = Run(command(workdir, steps))
    sig = signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL
    if rng.random() < 0.5:  # at a random time (start-up, compilation, anything)
      at = rng.uniform(0, startup + duration)
      time.sleep(at)
      where = f"t={at:.2f}s"
    else:  # just after a random step, within a save / eval / the next steps
      step = rng.randint(1, steps - 1)
      delay = rng.uniform(0, 0.05)
      if not run.wait_for_step(step):
        where = f"ended before step {step}"
      else:
        time.sleep(delay)
        where = f"step {step}+{delay * 1000:.0f}ms"
    running = run.proc.poll() is None
    if running:
      run.proc.send_signal(sig)
    code, err = run.finish()
    last = run.steps_seen[-1] if run.steps_seen else 0
    kills.append({"signal": sig.name, "where": where, "killed": running, "exit": code,
                  "last_logged_step": last, "unfinished_save_left": leftovers(workdir),
                  "preempted_exit_0": sig == signal.SIGTERM and running and code == 0})
    if code not in (0, -signal.SIGKILL) and not (sig == signal.SIGTERM and code == -sig):
      kills[-1]["stderr"] = err[-2000:]
  run = Run(command(workdir, steps))
  code, err = run.finish()
  result = {"trial": index, "kills": kills, "final_exit": code}
  if code != 0:
    result["stderr"] = err[-2000:]
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--trials", type=int, default=10)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--root", default="", help="scratch dir (default: a new temp dir)")
  parser.add_argument("--out", default="", help="write the JSON summary here")
  args = parser.parse_args(argv)
  root = args.root or tempfile.mkdtemp(prefix="ptft_faults_")
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  rng = random.Random(args.seed)

  t0 = time.time()
  ref_dir = os.path.join(root, "reference")
  ref = Run(command(ref_dir, args.steps))
  ref.wait_for_step(1)
  startup = time.time() - t0
  code, err = ref.finish()
  if code != 0:
    sys.exit(f"reference run failed:\n{err[-3000:]}")
  duration = time.time() - t0 - startup
  reference = final_state(ref_dir)
  print(f"reference: {args.steps} steps, start-up {startup:.1f}s, training {duration:.1f}s",
        flush=True)

  results = []
  for i in range(args.trials):
    r = trial(i, root, args.steps, startup, duration, rng)
    r["bitwise_equal"] = r["final_exit"] == 0 and same(
        final_state(os.path.join(root, f"trial_{i}")), reference)
    results.append(r)
    print(f"trial {i}: " + ", ".join(
        f"{k['signal']}@{k['where']}" + (" (save in flight)" if k["unfinished_save_left"] else "")
        + ("" if k["killed"] else " (had finished)") for k in r["kills"])
        + f" -> {'bitwise equal' if r['bitwise_equal'] else 'DIFFERENT'}", flush=True)

  kills = [k for r in results for k in r["kills"] if k["killed"]]
  summary = {
      "trials": len(results),
      "bitwise_equal": sum(r["bitwise_equal"] for r in results),
      "kills": len(kills),
      "sigkill": sum(k["signal"] == "SIGKILL" for k in kills),
      "sigterm": sum(k["signal"] == "SIGTERM" for k in kills),
      "sigterm_exit_0": sum(k["preempted_exit_0"] for k in kills),
      "kills_leaving_an_unfinished_save": sum(bool(k["unfinished_save_left"]) for k in kills),
      "kills_before_the_first_step": sum(k["last_logged_step"] == 0 for k in kills),
      "steps": args.steps,
      "seconds": round(time.time() - t0, 1),
      "results": results,
  }
  print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(summary, f, indent=1)
  return 0 if summary["bitwise_equal"] == summary["trials"] else 1


if __name__ == "__main__":
  sys.exit(main())
