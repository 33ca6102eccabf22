"""Serving figures: request latency of the embedding server and batch
embedding throughput, on real CIFAR-10 test images.

  python -m benchmarks.serving --model-dir outputs/serving_model/mae-tfx \
      --data ../shared/data/cifar10 [--requests 1000] [--clients 1,8,32]

Latency: the real server (`python -m serving.server`, a child process on
loopback) answers single-image PNG `:predict` requests from 1, 8 and 32
concurrent clients (threads with keep-alive sessions, on the same machine,
so the clients' CPU use counts against the server). Batch embedding: the
batch CLI's code path (`serving.embed.embed_all`) over PNG bytes in memory.
`--roofline cpu` adds the bound this CPU's matmul speed puts on batch
embedding for a model of that profile's shape (benchmarks/roofline.py).
"""

import argparse
import base64
import concurrent.futures
import os
import threading
import time

import numpy as np
import requests

from benchmarks import roofline
from models import config as config_lib
from models import names
from models.cifar10 import encode_png, read_batch_file
from models.names import SERVING_DEFAULT
from pipeline import data_source
from serving.embed import embed_all
from serving.launch import ServerProcess
from serving.model_store import load_version


def test_pngs(data: str, count: int):
  root = data_source.resolve_cifar10(data, names.DATA_CACHE_DIR)
  images, _ = read_batch_file(os.path.join(root, "test_batch"))
  return [encode_png(image) for image in images[:count]]


def latency(url: str, name: str, pngs, clients: int, total: int):
  """(p50 ms, p99 ms, requests/s) of `total` one-image requests."""
  bodies = [{"instances": [{"b64": base64.b64encode(p).decode()}]} for p in pngs]
  local = threading.local()

  def one(i):
    session = getattr(local, "session", None) or requests.Session()
    local.session = session
    start = time.perf_counter()
    r = session.post(f"{url}/v1/models/{name}:predict", json=bodies[i % len(bodies)])
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
      raise RuntimeError(f"request {i}: {r.status_code} {r.text}")
    return elapsed

  for i in range(min(50, total)):        # warm-up: connections, first calls
    one(i)
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    seconds = np.array(list(pool.map(one, range(total))))
  wall = time.perf_counter() - start
  return (np.percentile(seconds, 50) * 1e3, np.percentile(seconds, 99) * 1e3,
          total / wall)


def batch_embedding(model_dir: str, pngs, batch_size: int) -> float:
  model = load_version(model_dir)
  batches = lambda: (pngs[i:i + batch_size] for i in range(0, len(pngs), batch_size))  # noqa: E731
  embed_all(model, SERVING_DEFAULT, batches(), list(range(len(pngs))), progress=False)
  start = time.perf_counter()                                  # timed second pass
  embed_all(model, SERVING_DEFAULT, batches(), list(range(len(pngs))), progress=False)
  return len(pngs) / (time.perf_counter() - start)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model-dir", default=names.serving_model_dir())
  p.add_argument("--data", default=os.environ.get(names.CIFAR10_ENV))
  p.add_argument("--requests", type=int, default=1000, help="per concurrency level")
  p.add_argument("--clients", default="1,8,32")
  p.add_argument("--batch-sizes", default="64,256,1024")
  p.add_argument("--images", type=int, default=10000, help="for batch embedding")
  p.add_argument("--roofline", metavar="PROFILE", default=None,
                 help="also print the float32 matmul bound on batch embedding for "
                      "a model of this profile's shape (the pushed model's)")
  args = p.parse_args(argv)

  pngs = test_pngs(args.data, args.images)
  model = load_version(args.model_dir)
  print(f"model {model.path} (version {model.version}); {len(pngs)} CIFAR-10 test PNGs")
  lines, bound = [], None
  if args.roofline:
    bound, line = roofline.img_per_second_bound(
        "float32", roofline.embedding_flops(config_lib.get_profile(args.roofline).model))
    lines.append(f"{args.roofline} profile's encoder, {line}")
    print(lines[-1], flush=True)
  for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
    ips = batch_embedding(args.model_dir, pngs, batch_size)
    lines.append(f"batch embedding, batch {batch_size:5d}: {ips:7.0f} img/s"
                 + (f", {ips / bound:.0%} of the matmul bound" if bound else ""))
    print(lines[-1], flush=True)
  name = os.path.basename(os.path.abspath(args.model_dir))
  with ServerProcess(["--model-dir", args.model_dir]) as server:
    for clients in [int(c) for c in args.clients.split(",")]:
      p50, p99, rps = latency(server.url, name, pngs, clients, args.requests)
      lines.append(f"server, {clients:2d} client(s), {args.requests} one-image requests: "
                   f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  {rps:6.0f} req/s")
      print(lines[-1], flush=True)
    metrics = requests.get(f"{server.url}/monitoring/prometheus/metrics").text
  calls = dict(line.rsplit(" ", 1) for line in metrics.splitlines()
               if line.startswith("mae_tfx_model"))
  lines.append(f"server batching: {calls['mae_tfx_model_instances_total']} instances in "
               f"{calls['mae_tfx_model_calls_total']} model calls")
  print("\n".join(["summary:"] + lines))


if __name__ == "__main__":
  main()
