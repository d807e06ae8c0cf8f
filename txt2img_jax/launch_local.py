"""A pod rehearsal on one machine: N processes of txt2img_jax.main, each
with K fake CPU devices, joined by jax.distributed on 127.0.0.1.

  python -m txt2img_jax.launch_local --num_processes=2 --devices_per_process=2 \\
      -- --config=configs/restart.py:tiny --workdir=/tmp/mh_run

Everything after `--` goes to every process unchanged (the usual main
arguments). Each process's log is streamed with a `[p<i>] ` prefix. If one
process fails, the others are stopped and the launcher exits with its code.
SIGTERM or Ctrl-C is passed on to every process: they save a checkpoint at
the same step and stop, as on a preempted pod; the same command resumes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from txt2img_jax import cli

_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 2, "Processes (hosts) to start.", lower_bound=1
)
_DEVICES = flags.DEFINE_integer(
    "devices_per_process", 2, "Fake CPU devices in each process.", lower_bound=1
)
_PORT = flags.DEFINE_integer(
    "port", 0, "Coordinator port on 127.0.0.1 (0: a free one).", lower_bound=0
)
_MODULE = flags.DEFINE_string(
    "module", "txt2img_jax.main", "The module every process runs."
)

# How long processes get to exit after SIGTERM before they are killed.
_GRACE_S = 30.0


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(
    devices: int, base: dict[str, str] | None = None
) -> dict[str, str]:
  """The environment of one process: CPU only, `devices` fake devices."""
  env = dict(os.environ if base is None else base)
  # A device count already in XLA_FLAGS would win over ours: drop it.
  xla = re.sub(
      r"--xla_force_host_platform_device_count=\S*",
      "",
      env.get("XLA_FLAGS", ""),
  ).split()
  env["XLA_FLAGS"] = " ".join(
      xla + [f"--xla_force_host_platform_device_count={devices}"]
  )
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"  # Lines reach the prefixer as they happen.
  return env


def commands(
    args: list[str],
    num_processes: int,
    port: int,
    module: str = "txt2img_jax.main",
) -> list[list[str]]:
  """The command line of every process."""
  return [
      [
          sys.executable,
          "-m",
          module,
          "--distributed",
          f"--coordinator_address=127.0.0.1:{port}",
          f"--num_processes={num_processes}",
          f"--process_id={i}",
          *args,
      ]
      for i in range(num_processes)
  ]


class _Printer:
  """Whole lines from several processes, never interleaved mid-line."""

  def __init__(self):
    self._lock = threading.Lock()

  def line(self, text: str) -> None:
    with self._lock:
      sys.stdout.write(text if text.endswith("\n") else text + "\n")
      sys.stdout.flush()


def _stream(proc: subprocess.Popen, prefix: str, printer: _Printer) -> None:
  for line in iter(proc.stdout.readline, ""):
    printer.line(prefix + line)
  proc.stdout.close()


def launch(
    args: list[str],
    num_processes: int,
    devices: int,
    port: int = 0,
    module: str = "txt2img_jax.main",
) -> int:
  """Runs the processes to the end; returns 0 or the first failure's code."""
  port = port or free_port()
  printer = _Printer()
  printer.line(
      f"[launch] {num_processes} processes x {devices} CPU devices, "
      f"coordinator 127.0.0.1:{port}"
  )
  env = process_env(devices)
  procs, threads = [], []
  for i, cmd in enumerate(commands(args, num_processes, port, module)):
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    procs.append(proc)
    printer.line(f"[launch] p{i}: pid {proc.pid}")
    t = threading.Thread(
        target=_stream, args=(proc, f"[p{i}] ", printer), daemon=True
    )
    t.start()
    threads.append(t)

  def forward(signum, frame):
    # As SIGTERM: on several processes JAX's coordination service turns a
    # SIGTERM into the preemption notice the hosts agree on a step with;
    # a SIGINT would only raise KeyboardInterrupt in each.
    del frame
    printer.line(
        f"[launch] {signal.Signals(signum).name}: sending SIGTERM "
        "to every process"
    )
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM)

  previous = {
      s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)
  }
  try:
    code = _wait(procs, printer)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    _stop(procs)
    for t in threads:
      t.join(timeout=5)
  printer.line(
      f"[launch] {'all processes finished' if code == 0 else 'failed'}"
      f" (exit code {code})"
  )
  return code


def _wait(procs: list[subprocess.Popen], printer: _Printer) -> int:
  while True:
    codes = [p.poll() for p in procs]
    failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
    if failed:
      i, c = failed[0]
      printer.line(
          f"[launch] process {i} exited with code {c}; stopping " "the others"
      )
      return c if c > 0 else 128 - c  # -N: killed by signal N.
    if all(c == 0 for c in codes):
      return 0
    time.sleep(0.2)


def _stop(procs: list[subprocess.Popen]) -> None:
  """SIGTERM to the processes still running, SIGKILL after a grace time."""
  alive = [p for p in procs if p.poll() is None]
  for p in alive:
    p.terminate()
  deadline = time.monotonic() + _GRACE_S
  for p in alive:
    try:
      p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def main(argv: list[str]) -> None:
  args = argv[1:]
  if not args:
    raise ValueError(
        "give the main arguments after `--`, e.g. -- "
        "--config=configs/restart.py:tiny --workdir=/tmp/run"
    )
  sys.exit(
      launch(
          args, _NUM_PROCESSES.value, _DEVICES.value, _PORT.value, _MODULE.value
      )
  )


if __name__ == "__main__":
  cli.run(main)
