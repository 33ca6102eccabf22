"""Runs the notebooks in `notebooks/` on a run's outputs with nbclient.

  python -m pipeline.notebooks [--output-dir outputs] [--run-id ID]   # make notebooks

executes each notebook on the newest run (or `--run-id`) under the output
folder and saves it in place with its outputs, so a reader sees a real run
without running anything (and the README's pictures into
notebooks/figures/). Paths in the outputs are shown relative to the output
folder (`<output>/...`) and the project (`./...`): a saved notebook names no
machine. The tests execute them the same way on the smoke run; a
failing cell raises `nbclient.exceptions.CellExecutionError`.
"""

import argparse
import base64
import contextlib
import logging
import os
import re
import tempfile
from typing import Dict, Iterator, Optional

from models import names
from pipeline import runs

NOTEBOOK_DIR = os.path.join(names.PROJECT_DIR, "notebooks")
WALKTHROUGH = "pipeline_walkthrough.ipynb"  # `make report` exports it as HTML
NOTEBOOKS = (WALKTHROUGH, "explore_embeddings.ipynb")
CELL_TIMEOUT_S = 1800
FIGURE_TAG = "figure-"  # a cell tag naming its picture (`pictures`)
# The walkthrough's pictures the README shows, saved beside the notebooks.
README_PICTURES = ("reconstructions", "embedding_map")
README_PICTURE_DIR = os.path.join(NOTEBOOK_DIR, "figures")
_NBCONVERT_ALT = "No description has been provided for this image"


def _set_environment(values: Dict[str, Optional[str]]) -> None:
  for k, v in values.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@contextlib.contextmanager
def _environment(values: Dict[str, Optional[str]]) -> Iterator[None]:
  """os.environ with `values` set (None: unset), for the kernel we start."""
  saved = {k: os.environ.get(k) for k in values}
  _set_environment(values)
  try:
    yield
  finally:
    _set_environment(saved)


def machine_paths(output_dir: str) -> Dict[str, str]:
  """{absolute prefix: what a saved notebook shows instead}, longest first."""
  prefixes = {
      os.path.abspath(output_dir): "<output>",
      names.PROJECT_DIR: ".",
      os.path.expanduser("~"): "~",
  }
  return dict(sorted(prefixes.items(), key=lambda kv: -len(kv[0])))


def scrub(nb, output_dir: str) -> None:
  """Replaces machine paths in every text output, drops blank stream
  outputs and the per-cell execution timestamps (they change on every run)."""
  replace = machine_paths(output_dir)

  def clean(text: str) -> str:
    for prefix, shown in replace.items():
      text = text.replace(prefix, shown)
    return text

  for cell in nb.cells:
    cell.metadata.pop("execution", None)
    if "outputs" in cell:  # blank stderr lines the kernel's fd capture leaves
      cell.outputs = [
          o for o in cell.outputs if not (o.output_type == "stream" and not o.text.strip())
      ]
    for output in cell.get("outputs", []):
      if "text" in output:
        output["text"] = clean(output["text"])
      for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
          output["data"][mime] = clean(value) if isinstance(value, str) else value


def execute(name: str, output_dir: str, run_id: Optional[str] = None):
  """Runs notebook `name` of `notebooks/` on the runs under `output_dir`;
  returns the executed notebook (scrubbed), leaving the file as it was."""
  import nbformat
  from nbclient import NotebookClient
  from traitlets.config import Config

  nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
  with (
      _environment({names.OUTPUT_ENV: os.path.abspath(output_dir), names.RUN_ID_ENV: run_id}),
      tempfile.TemporaryDirectory() as sockets,
  ):
    # The kernel listens on Unix sockets in a private folder, not on loopback
    # TCP ports another user of the machine could reach.
    config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
    NotebookClient(
        nb,
        config=config,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": names.PROJECT_DIR}},
    ).execute()
  scrub(nb, output_dir)
  return nb


def pictures(nb) -> Dict[str, bytes]:
  """{name: PNG} of an executed notebook's pictures, named by their cell's
  `figure-<name>` tag (else `cell-<index>`)."""
  found = {}
  for i, cell in enumerate(nb.cells):
    tags = [t[len(FIGURE_TAG) :] for t in cell.metadata.get("tags", []) if t.startswith(FIGURE_TAG)]
    for output in cell.get("outputs", []):
      if "image/png" in output.get("data", {}):
        found[tags[0] if tags else f"cell-{i}"] = base64.b64decode(output["data"]["image/png"])
  return found


def to_html(nb) -> str:
  """The executed notebook as one static HTML page, without the code; each
  picture's alt text is its name (`pictures`)."""
  from nbconvert import HTMLExporter

  exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
  # The lab template writes no alt text; nbconvert fills a placeholder in
  # and warns. The placeholders are replaced by the pictures' names below.
  level = exporter.log.level
  exporter.log.setLevel(logging.ERROR)
  try:
    page = exporter.from_notebook_node(nb)[0]
  finally:
    exporter.log.setLevel(level)
  names = iter(pictures(nb))
  return re.sub(re.escape(_NBCONVERT_ALT), lambda _: next(names, "picture").replace("_", " "), page)


def main(argv=None):
  """Executes and saves the notebooks (`make notebooks`) and writes the README's pictures."""
  import nbformat

  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  runs.add_output_dir_argument(p)
  p.add_argument("--run-id", default=None, help="which run (default the newest)")
  p.add_argument(
      "notebooks",
      nargs="*",
      default=list(NOTEBOOKS),
      help=f"which of notebooks/ (default {' '.join(NOTEBOOKS)})",
  )
  args = p.parse_args(argv)
  for name in args.notebooks:
    nb = execute(name, args.output_dir, args.run_id)
    path = os.path.join(NOTEBOOK_DIR, name)
    nbformat.write(nb, path)
    print(f"{path}: executed and saved, {os.path.getsize(path) / 1e6:.2f} MB", flush=True)
    for picture, data in pictures(nb).items():
      if picture in README_PICTURES:
        with open(os.path.join(README_PICTURE_DIR, f"{picture}.png"), "wb") as f:
          f.write(data)


if __name__ == "__main__":
  main()
