"""The embedding server under sustained load: a soak with a push in the
middle, and a flood against the load-shedding bound.

  python -m benchmarks.serving_soak --model-dir outputs/serving_model/mae-tfx \
      --data ../shared/data/cifar10 [--seconds 60] [--clients 16] [--push MODEL_DIR]
      [--max-queued 512] [--images-per-request 2] [--bad-every 3]

Soak: `--clients` threads (keep-alive sessions) send for `--seconds` a mix of
good 2-image `:predict` requests and (every 3rd) bad ones (broken JSON, bad
base64, a non-image), while the server's RSS is sampled; with `--push`, that SavedModel
is pushed as a new version half-way (the Pusher's own `push_to_filesystem`).
Prints requests by status, dropped connections, p50/p99 of good requests,
the versions that answered, and RSS over time. Flood (`--flood`): clients
send 32-image requests back to back (waiting `Retry-After` after a 503);
prints how many were shed and the p99 of those served. `tests/test_serving_robustness.py` runs the
same `soak` for a few seconds.
"""

import argparse
import base64
import json
import os
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import numpy as np
import requests

from benchmarks.serving import rss_mb, test_pngs
from serving.launch import ServerProcess

NAME = "mae-tfx"


def soak(
    url: str,
    pngs: List[bytes],
    seconds: float,
    clients: int,
    on_half: Optional[Callable[[], None]] = None,
    images_per_request: int = 2,
    bad_every: int = 3,
    until: Optional[Callable[[List], bool]] = None,
    most_seconds: float = 120.0,
) -> Dict:
  """Clients mixing good requests and (every `bad_every`-th) bad ones for
  `seconds`, and past that while `until(results so far)` is false, for at
  most `most_seconds` in all (a pushed version loads slower on a busy
  machine). Returns {"results": [(status, X-Model-Version, seconds,
  good?)], "dropped": connections that failed}."""
  good = json.dumps(
      {"instances": [{"b64": base64.b64encode(p).decode()} for p in pngs[:images_per_request]]}
  ).encode()
  bad = [
      b"{",
      json.dumps({"instances": [{"b64": "@@"}]}).encode(),
      json.dumps({"instances": [{"b64": base64.b64encode(b"text").decode()}]}).encode(),
  ]
  start_at = time.monotonic()
  results, dropped, lock = [], [0], threading.Lock()

  def going() -> bool:
    elapsed = time.monotonic() - start_at
    if elapsed < seconds or until is None:
      return elapsed < seconds
    with lock:
      return elapsed < most_seconds and not until(results)

  def client(i: int) -> None:
    session, n = requests.Session(), 0
    while going():
      is_good = not bad_every or (i + n) % bad_every != 0
      start = time.monotonic()
      try:
        r = session.post(
            f"{url}/v1/models/{NAME}:predict",
            data=good if is_good else bad[n % len(bad)],
            timeout=60,
        )
      except requests.ConnectionError:
        with lock:
          dropped[0] += 1
        n += 1
        continue
      with lock:
        results.append(
            (r.status_code, r.headers.get("X-Model-Version"), time.monotonic() - start, is_good)
        )
      n += 1
      if r.status_code == 503:  # a well-behaved client waits as told
        time.sleep(float(r.headers.get("Retry-After", 1)))

  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  for t in threads:
    t.start()
  if on_half:
    time.sleep(seconds / 2)
    on_half()
  for t in threads:
    t.join()
  return {"results": results, "dropped": dropped[0]}


def answered_by(pushed: List[str]) -> Callable[[List], bool]:
  """A `soak(until=...)` that holds once the version in `pushed` (empty
  until the push returns) has answered a request."""
  return lambda results: bool(pushed) and any(v == pushed[0] for s, v, _, _ in results if s == 200)


def summary(outcome: Dict) -> str:
  """One line on a `soak`: responses by status, dropped connections, p50
  and p99 of the good requests served, and the versions that answered."""
  results = outcome["results"]
  statuses: Dict[int, int] = {}
  for status, _, _, _ in results:
    statuses[status] = statuses.get(status, 0) + 1
  served = [s for status, _, s, good in results if good and status == 200]
  versions = sorted({v for status, v, _, good in results if good and v})
  p50, p99 = (np.percentile(served, [50, 99]) * 1e3) if served else (float("nan"),) * 2
  return (
      f"{len(results)} responses {dict(sorted(statuses.items()))}, dropped connections "
      f"{outcome['dropped']}, served p50 {p50:.1f} ms p99 {p99:.1f} ms, "
      f"versions {versions}"
  )


def main(argv=None):
  """Soaks (`--flood`: floods) a server on a copy of `--model-dir`, pushing
  `--push` half-way, then soaks it again for half as long; prints each
  soak's `summary`, the server's RSS over time and its shedding metrics."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--model-dir", required=True, help="a base of pushed versions")
  p.add_argument("--data", required=True, help="CIFAR-10 (its test PNGs are the requests)")
  p.add_argument("--seconds", type=float, default=60)
  p.add_argument("--clients", type=int, default=16)
  p.add_argument(
      "--push",
      default=None,
      help=(
          "a SavedModel to push half-way; the clients go on until it answers "
          "(for at most 120 s or --seconds, the longer)"
      ),
  )
  p.add_argument("--max-queued", type=int, default=512)
  p.add_argument(
      "--flood", action="store_true", help="32-image requests as fast as possible, no bad ones"
  )
  p.add_argument(
      "--images-per-request",
      type=int,
      default=None,
      help="images in each good request (default 2; --flood: 32)",
  )
  p.add_argument(
      "--bad-every",
      type=int,
      default=None,
      help="every N-th request is a bad one (default 3; 0: none; --flood: 0)",
  )
  args = p.parse_args(argv)
  from components.versioned_pusher import push_to_filesystem
  import shutil

  pngs = test_pngs(args.data, 64)
  with tempfile.TemporaryDirectory() as tmp:
    base = os.path.join(tmp, NAME)  # a copy: the push must not touch the original
    shutil.copytree(args.model_dir, base)
    with ServerProcess(
        ["--model-dir", base, "--poll-seconds", "1", "--max-queued", str(args.max_queued)]
    ) as server:
      pid = server.process.pid
      samples = [("start", rss_mb(pid))]

      pushed = []

      def push():
        samples.append(("before push", rss_mb(pid)))
        pushed.append(push_to_filesystem(args.push, base))
        print(f"pushed version {pushed[0]}", flush=True)

      outcome = soak(
          server.url,
          pngs,
          args.seconds,
          args.clients,
          on_half=push if args.push else None,
          images_per_request=args.images_per_request or (32 if args.flood else 2),
          bad_every=(args.bad_every if args.bad_every is not None else 0 if args.flood else 3),
          until=answered_by(pushed) if args.push else None,
      )
      samples.append(("end", rss_mb(pid)))
      settle = soak(server.url, pngs, args.seconds / 2, args.clients)
      samples.append(("after a second soak", rss_mb(pid)))
      shed = requests.get(f"{server.url}/monitoring/prometheus/metrics").text
  print(
      ("flood" if args.flood else "soak")
      + f", {args.clients} clients, {args.seconds:g} s: "
      + summary(outcome)
  )
  print(f"second soak ({args.seconds / 2:g} s): " + summary(settle))
  print("RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in samples))
  print("".join(line + "\n" for line in shed.splitlines() if "shed" in line or "503" in line))


if __name__ == "__main__":
  main()
