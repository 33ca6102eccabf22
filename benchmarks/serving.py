"""Serving figures side by side, in one run, on real CIFAR-10 test images.

  python -m benchmarks.serving --model-dir outputs/serving_model/mae-tfx \
      --data ../shared/data/cifar10 [--requests 300] [--clients 1,8] \
      [--batch-sizes 1,32,256] [--quality | --quality-only]

Every model call in this process runs on one intra-op thread, one call per
core at once, as in the server (`serving.model_store.set_model_threads`).

1. Where one image's milliseconds go: each step of a one-image request timed
   in this process (p50 of many): the server's JSON and base64, decoding +
   Transform, the encoder + whitening op by op (as TF Serving runs the
   signature) and compiled (float32, bfloat16), the response's JSON; beside
   the round trips measured in 4.
2. Batch embedding (the batch CLI's code path, `serving.embed.embed_all`:
   batches of MAX_BATCH, one per core at once) per precision, as saved and
   compiled, beside the bound this CPU's matmul speed puts on it for the
   model's shape (benchmarks/roofline.py).
3. Memory per loaded version: what loading the version a second time adds
   to a fresh process that loaded it once, by part (search index,
   SavedModel, compiled buckets).
4. The server (`python -m serving.server`, a child process on loopback) in
   three configurations: as saved (float32, op by op: TF Serving's path;
   one model call at a time over both cores, as before issue 28), compiled
   float32, compiled bfloat16 (one call per core). For each, its cold start
   (process start to the first answered request, the median of
   --cold-starts) and RSS, then REST and gRPC, 1 and 8
   clients (threads with keep-alive sessions / one channel each, on the same
   two cores, so the clients' CPU counts against the server), requests of 1,
   32 and 256 images: p50 and p99 latency and img/s. The two APIs take turns
   within each cell (rounds of REST, gRPC, REST, ...), so a drift of the
   host's speed hits both alike.
5. `--quality`: bfloat16 against float32 where it matters: the served
   model's linear probe and k-NN (k = 20, the train split as the bank)
   accuracy on the test split from each precision's embeddings, the
   probe's accuracy on float32 embeddings moved by 1e-3 relative noise, and
   the cosine between the two embeddings of each image.
"""

import argparse
import base64
import concurrent.futures
import os
import sys
import threading
import time
from typing import Callable, Dict, List

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import numpy as np
import orjson
import requests

from benchmarks import roofline
from benchmarks.host import host_line
from models import config as config_lib
from models import names
from models.cifar10 import encode_png, read_split
from models.names import SERVING_BFLOAT16, SERVING_DEFAULT
from pipeline import data_source
from serving.embed import embed_all
from serving.launch import ServerProcess
from serving.model_store import MAX_BATCH, LoadedModel, cores, load_version, set_model_threads

PRECISIONS = {"float32": SERVING_DEFAULT, "bfloat16": SERVING_BFLOAT16}
NOISE = 1e-3  # --quality: the relative noise added to float32 embeddings
# (label, server flags): TF Serving's way first, then this server's.
CONFIGS = [
    (
        "as saved, float32, one call at a time on both cores",
        ["--no-compile", "--precision", "float32", "--model-threads", "1"],
    ),
    ("compiled, float32", ["--precision", "float32"]),
    ("compiled, bfloat16", ["--precision", "bfloat16"]),
]


def cifar10_split(data: str, split: str, count: int = None):
  """(PNG bytes, labels) of the first `count` images of a CIFAR-10 split."""
  images, labels = read_split(data_source.resolve_cifar10(data, names.DATA_CACHE_DIR), split)
  return [encode_png(image) for image in images[:count]], labels[:count]


def test_pngs(data: str, count: int) -> List[bytes]:
  """The first `count` CIFAR-10 test images, PNG-encoded."""
  return cifar10_split(data, "test", count)[0]


def p50_ms(fn: Callable, repeats: int = 300) -> float:
  """The median milliseconds of `repeats` calls of `fn`, after 20 warm-up calls."""
  for _ in range(20):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.percentile(times, 50) * 1e3)


# --------------------------------------------------------------------------
# 1. One image, step by step
# --------------------------------------------------------------------------
def breakdown(model: LoadedModel, png: bytes) -> Dict[str, float]:
  """{step: p50 ms} of one image's request, in this process."""
  import tensorflow as tf
  from serving.server import _format_outputs, decode_instances

  body = orjson.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]})
  saved = model.saved_model
  images = getattr(saved, names.PREPARE_IMAGE_BYTES)(tf.constant([png]))
  steps = {
      "JSON + base64 of the request": lambda: decode_instances(
          orjson.loads(body), names.IMAGE_BYTES_INPUT
      ),
      "decoding + Transform (saved function)": lambda: getattr(saved, names.PREPARE_IMAGE_BYTES)(
          tf.constant([png])
      ).numpy(),
  }
  for precision, signature in PRECISIONS.items():
    embed = getattr(saved, names.EMBED_IMAGES[signature])
    compiled = model.compiled(signature)
    compiled.compile(1)
    steps[f"encoder + whitening, {precision}, op by op"] = lambda e=embed: e(images)[
        names.EMBEDDING_KEY
    ].numpy()
    steps[f"encoder + whitening, {precision}, compiled"] = lambda c=compiled: c.compiled_embed(
        images
    )[names.EMBEDDING_KEY].numpy()
  for signature in PRECISIONS.values():
    function = model.signatures[signature].function
    steps[f"the {signature} signature as saved (all of it)"] = lambda f=function: f(
        image_bytes=tf.constant([png])
    )[names.EMBEDDING_KEY].numpy()
    steps[f"the {signature} signature compiled (all of it)"] = lambda s=signature: model.run(
        s, [png]
    )
  outputs = model.run(SERVING_DEFAULT, [png])
  steps["JSON of the response"] = lambda: orjson.dumps(
      _format_outputs(outputs, False), option=orjson.OPT_SERIALIZE_NUMPY
  )
  return {step: p50_ms(fn) for step, fn in steps.items()}


# --------------------------------------------------------------------------
# 2. Batch embedding
# --------------------------------------------------------------------------
def embed_pngs(model: LoadedModel, signature: str, pngs: List[bytes]) -> np.ndarray:
  """The batch CLI's loop over `pngs`: batches of MAX_BATCH, one per core."""
  batches = (pngs[i : i + MAX_BATCH] for i in range(0, len(pngs), MAX_BATCH))
  return embed_all(
      model, signature, batches, list(range(len(pngs))), progress=False, workers=cores()
  )[0]


def batch_embedding(model: LoadedModel, signature: str, pngs: List[bytes]) -> float:
  """img/s of the batch CLI's loop, after a first pass (tracing, compiling)."""
  embed_pngs(model, signature, pngs)
  start = time.perf_counter()
  embed_pngs(model, signature, pngs)
  return len(pngs) / (time.perf_counter() - start)


# --------------------------------------------------------------------------
# 3. The server
# --------------------------------------------------------------------------
def rest_client(url: str, name: str, pngs: List[bytes], size: int) -> Callable:
  """`call(i)`: POSTs the i-th request (cycling) of `size` images of `pngs`
  to model `name`'s REST predict at `url`, a keep-alive session per thread;
  raises unless the answer is 200."""
  bodies = [
      orjson.dumps(
          {"instances": [{"b64": base64.b64encode(p).decode()} for p in pngs[i : i + size]]}
      )
      for i in range(0, len(pngs) - size + 1, size)
  ]
  local = threading.local()

  def call(i: int) -> None:
    session = getattr(local, "session", None) or requests.Session()
    local.session = session
    r = session.post(
        f"{url}/v1/models/{name}:predict",
        data=bodies[i % len(bodies)],
        headers={"Content-Type": "application/json"},
    )
    if r.status_code != 200:
      raise RuntimeError(f"REST request {i}: {r.status_code} {r.text[:200]}")

  return call


def grpc_client(target: str, name: str, pngs: List[bytes], size: int) -> Callable:
  """`call(i)`: sends the i-th Predict request (cycling) of `size` images of
  `pngs` to model `name` over gRPC at `target`, a channel per thread."""
  import grpc
  from tensorflow_serving.apis import prediction_service_pb2_grpc
  from serving.grpc_api import predict_request

  requests_ = [
      predict_request(name, pngs[i : i + size]) for i in range(0, len(pngs) - size + 1, size)
  ]
  local = threading.local()

  def call(i: int) -> None:
    stub = getattr(local, "stub", None)
    if stub is None:
      local.channel = grpc.insecure_channel(target)
      stub = local.stub = prediction_service_pb2_grpc.PredictionServiceStub(local.channel)
    stub.Predict(requests_[i % len(requests_)], timeout=120)

  return call


def load_test(
    calls: Dict[str, Callable], clients: int, total: int, rounds: int = 5
) -> Dict[str, tuple]:
  """{name: (p50 ms, p99 ms, requests/s)} of `total` calls of each of
  `calls` from `clients` threads, the calls taking turns in `rounds`."""

  def timed(call, i):
    start = time.perf_counter()
    call(i)
    return time.perf_counter() - start

  seconds = {name: [] for name in calls}
  wall = dict.fromkeys(calls, 0.0)
  per_round = max(clients, total // rounds)
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    for call in calls.values():  # warm-up
      list(pool.map(lambda i, c=call: timed(c, i), range(min(total, 10 * clients))))
    for r in range(rounds):
      for name, call in calls.items():
        start = time.perf_counter()
        seconds[name] += pool.map(
            lambda i, c=call: timed(c, i), range(r * per_round, (r + 1) * per_round)
        )
        wall[name] += time.perf_counter() - start
  return {
      name: (np.percentile(s, 50) * 1e3, np.percentile(s, 99) * 1e3, len(s) / wall[name])
      for name, s in seconds.items()
  }


def rss_mb(pid: int) -> float:
  """Process `pid`'s resident set size now (VmRSS), in MB."""
  with open(f"/proc/{pid}/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _version_memory(path: str) -> Dict[str, float]:
  """In a fresh process: {part: MB of RSS} one more loaded version adds to
  a process serving one (the runtime, libraries and first-use costs are
  paid by the first)."""
  from models import search_index
  from models.names import SEARCH_INDEX_DIR

  set_model_threads(cores())
  first = LoadedModel(0, path)
  first.warm_up()
  parts, before = {}, rss_mb(os.getpid())
  index_dir = os.path.join(path, SEARCH_INDEX_DIR)
  index = search_index.load(index_dir) if os.path.isdir(index_dir) else None
  index_mb = rss_mb(os.getpid()) - before
  parts[f"search index ({len(index) if index else 'no'} vectors)"] = index_mb
  loaded = LoadedModel(1, path)
  parts["SavedModel (variables, k-NN bank, functions)"] = (
      rss_mb(os.getpid()) - before - 2 * index_mb
  )  # it loads its own index
  compiled = loaded.compiled(SERVING_DEFAULT)
  start = rss_mb(os.getpid())
  for bucket in compiled.buckets if compiled else ():
    compiled.compile(bucket)
  parts["serving_default's compiled buckets, run once each"] = rss_mb(os.getpid()) - start
  return parts


def version_memory(path: str) -> Dict[str, float]:
  """`_version_memory` in a child process: RSS growth in this one would be
  hidden by memory its earlier steps freed."""
  import multiprocessing

  with concurrent.futures.ProcessPoolExecutor(
      1, mp_context=multiprocessing.get_context("spawn")
  ) as pool:
    return pool.submit(_version_memory, path).result()


def cold_start(model_dir: str, flags: List[str], png: bytes, repeats: int = 3) -> float:
  """Seconds from starting the server process to its first answered request
  (the median of `repeats` starts)."""
  name = os.path.basename(os.path.abspath(model_dir))
  body = {"instances": [{"b64": base64.b64encode(png).decode()}]}
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    with ServerProcess(["--model-dir", model_dir, *flags]) as server:
      r = requests.post(f"{server.url}/v1/models/{name}:predict", json=body)
      r.raise_for_status()
      seconds.append(time.perf_counter() - start)
  return float(np.median(seconds))


# --------------------------------------------------------------------------
# 4. bfloat16 against float32
# --------------------------------------------------------------------------
def quality(model: LoadedModel, data: str) -> Dict[str, Dict]:
  """Per precision: linear probe and k-NN test accuracy from its embeddings;
  and the cosine between the precisions' embeddings."""
  import tensorflow as tf
  from models.evaluation import knn_predict, with_relative_noise

  train, train_labels = cifar10_split(data, "train")
  test, test_labels = cifar10_split(data, "test")
  head = model.saved_model.head
  results, embedded = {}, {}
  for precision, signature in PRECISIONS.items():
    bank, queries = embed_pngs(model, signature, train), embed_pngs(model, signature, test)
    logits = head(tf.constant(queries), training=False).numpy()
    results[precision] = dict(
        lp=float(np.mean(np.argmax(logits, -1) == test_labels)),
        knn=float(np.mean(knn_predict(bank, train_labels, queries, names.KNN_K) == test_labels)),
    )
    embedded[precision] = queries
  a, b = embedded["float32"], embedded["bfloat16"]
  cosine = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  results["cosine"] = dict(min=float(cosine.min()), mean=float(cosine.mean()))
  noisy = with_relative_noise(a, NOISE, np.random.default_rng(0))
  logits = head(tf.constant(noisy), training=False).numpy()
  results[f"float32 + {NOISE:g} noise"] = dict(
      lp=float(np.mean(np.argmax(logits, -1) == test_labels))
  )
  return results


def main(argv=None):
  """Prints the serving figures: one image's milliseconds step by step,
  batch embedding against the matmul bound, the memory one more loaded
  version adds, the server's cold start, RSS, latency and img/s per
  configuration, and with `--quality` bfloat16 against float32."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--model-dir", default=names.serving_model_dir())
  p.add_argument("--data", default=os.environ.get(names.CIFAR10_ENV))
  p.add_argument(
      "--requests",
      type=int,
      default=1000,
      help="one-image requests per cell; bigger requests send as many images",
  )
  p.add_argument("--clients", default="1,8")
  p.add_argument(
      "--cold-starts", type=int, default=3, help="server starts timed, the median reported"
  )
  p.add_argument("--batch-sizes", default="1,32,256", help="images per request")
  p.add_argument("--images", type=int, default=5120, help="for batch embedding")
  p.add_argument(
      "--roofline",
      metavar="PROFILE",
      default="cpu",
      help="the profile whose model shape the matmul bound counts (the pushed model's)",
  )
  p.add_argument(
      "--quality",
      action="store_true",
      help="also LP and k-NN of bfloat16 against float32 (embeds CIFAR-10 twice)",
  )
  p.add_argument(
      "--quality-only", action="store_true", help="only the --quality figures (section 5)"
  )
  args = p.parse_args(argv)
  args.quality = args.quality or args.quality_only

  set_model_threads(cores())
  print(host_line(), flush=True)
  pngs = test_pngs(args.data, args.images)
  model = load_version(args.model_dir)
  name = os.path.basename(os.path.abspath(args.model_dir))
  print(f"model {model.path} (version {model.version}); {len(pngs)} CIFAR-10 test PNGs", flush=True)
  if not all(sig in model.signatures for sig in PRECISIONS.values()):
    raise SystemExit(
        f"{model.path} has no {SERVING_BFLOAT16} signature: push a model "
        "with this version of the project"
    )

  if args.quality_only:
    print_quality(model, args.data)
    return

  print("\n1. one image, step by step (p50 ms, in process):", flush=True)
  steps = breakdown(model, pngs[0])
  for step, ms in steps.items():
    print(f"  {step:55s} {ms:6.2f}", flush=True)

  print(
      f"\n2. batch embedding, batches of {MAX_BATCH}, {cores()} at once (serving.embed):",
      flush=True,
  )
  flops = roofline.embedding_flops(config_lib.get_profile(args.roofline).model)
  as_saved = LoadedModel(model.version, model.path, compiled=False)
  for precision, signature in PRECISIONS.items():
    policy = "float32" if precision == "float32" else "mixed_bfloat16"
    bound, line = roofline.img_per_second_bound(policy, flops, concurrent=cores())
    print(f"  bound: {line}", flush=True)
    for how, loaded in (("as saved", as_saved), ("compiled", model)):
      ips = batch_embedding(loaded, signature, pngs)
      print(f"  {precision}, {how}: {ips:7.0f} img/s, {ips / bound:.0%} of the bound", flush=True)

  print("\n3. memory one more loaded version adds (RSS):", flush=True)
  for part, mb in version_memory(model.path).items():
    print(f"  {part:55s} {mb:6.0f} MB", flush=True)

  sizes = [int(b) for b in args.batch_sizes.split(",")]
  print("\n4. the server on loopback (p50 / p99 ms, img/s):", flush=True)
  for label, flags in CONFIGS:
    seconds = cold_start(args.model_dir, flags, pngs[0], args.cold_starts)
    # Every client's biggest request may queue: the load is measured, not shed.
    bound = str(max(256, max(sizes) * max(int(c) for c in args.clients.split(","))))
    with ServerProcess(
        ["--model-dir", args.model_dir, "--poll-seconds", "60", "--max-queued", bound, *flags]
    ) as server:
      time.sleep(1.0)
      print(
          f"  {label}: cold start {seconds:.1f} s, RSS {rss_mb(server.process.pid):.0f} MB "
          "after loading",
          flush=True,
      )
      for size in sizes:
        calls = {
            "REST": rest_client(server.url, name, pngs, size),
            "gRPC": grpc_client(server.grpc_target, name, pngs, size),
        }
        for clients in [int(c) for c in args.clients.split(",")]:
          total = max(4 * clients, args.requests // size)
          for api, (p50, p99, rps) in load_test(calls, clients, total).items():
            print(
                f"    {api:4s} {clients:2d} client(s), {size:3d} image(s) a request: "
                f"p50 {p50:7.2f}  p99 {p99:7.2f}  {rps * size:6.0f} img/s",
                flush=True,
            )
      print(f"    RSS after the load: {rss_mb(server.process.pid):.0f} MB", flush=True)

  if args.quality:
    print_quality(model, args.data)


def print_quality(model: LoadedModel, data: str) -> None:
  """Prints section 5, `quality`'s figures."""
  print(
      "\n5. bfloat16 against float32 on CIFAR-10 (the model's own probe; k-NN k = "
      f"{names.KNN_K}, the train split as the bank):",
      flush=True,
  )
  results = quality(model, data)
  for precision in PRECISIONS:
    r = results[precision]
    print(f"  {precision}: LP {100 * r['lp']:.2f} %, k-NN {100 * r['knn']:.2f} %")
  noisy = f"float32 + {NOISE:g} noise"
  print(f"  {noisy} (relative, on the embedding): LP {100 * results[noisy]['lp']:.2f} %")
  print(
      f"  cosine bfloat16 vs float32 embeddings: min {results['cosine']['min']:.5f}, "
      f"mean {results['cosine']['mean']:.6f}"
  )


if __name__ == "__main__":
  sys.exit(main())
