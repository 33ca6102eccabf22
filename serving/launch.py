"""Starts `python -m serving.server` as a child process and waits until it
listens (for the tests and the serving benchmark)."""

import os
import re
import subprocess
import sys
import threading
import time
from typing import List, Optional

_LISTENING = re.compile(r"^serving\.server: .* on (http://\S+)$")
_GRPC = re.compile(r"^serving\.server: gRPC on (\S+)$")


class ServerProcess:
  """`python -m serving.server` with `args` as a child process: entered once it
  listens (at `url`, and gRPC at `grpc_target`), terminated on exit.

  with ServerProcess(["--model-dir", d]) as server: requests.get(server.url + ...)
  """

  def __init__(self, args: List[str], timeout_seconds: float = 180.0):
    self.args, self.timeout = list(args), timeout_seconds
    self.url: Optional[str] = None
    self.grpc_target: Optional[str] = None  # host:port, for grpc.insecure_channel
    self.stderr_lines: List[str] = []
    self.process: Optional[subprocess.Popen] = None

  def __enter__(self) -> "ServerProcess":
    args = self.args + [
        a for flag in ("--port", "--grpc-port") if flag not in self.args for a in (flag, "0")
    ]
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([project] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    )
    self.process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Read both pipes continuously so the server never blocks on a full one.
    self._listening = threading.Event()
    threading.Thread(target=self._collect_stdout, daemon=True).start()
    threading.Thread(target=self._collect_stderr, daemon=True).start()
    deadline = time.monotonic() + self.timeout
    while time.monotonic() < deadline and self.process.poll() is None:
      if self._listening.wait(0.2):
        return self
    self.__exit__(None, None, None)
    raise RuntimeError("serving.server did not start:\n" + "".join(self.stderr_lines[-30:]))

  def _collect_stdout(self) -> None:
    for line in self.process.stdout:
      grpc_match = _GRPC.match(line.strip())
      if grpc_match:
        self.grpc_target = grpc_match.group(1)
      match = _LISTENING.match(line.strip())
      if match and not self._listening.is_set():
        self.url = match.group(1)
        self._listening.set()

  def _collect_stderr(self) -> None:
    for line in self.process.stderr:
      self.stderr_lines.append(line)

  @property
  def stderr(self) -> str:
    """What the server has written to stderr so far."""
    return "".join(self.stderr_lines)

  def __exit__(self, *exc) -> None:
    if self.process and self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
