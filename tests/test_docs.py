"""The README and the guides in docs/ stay short, linked and true.

Fast and without TensorFlow: the Markdown is read as text. What a page
shows as a command is held to the code: every `python -m <module>` names a
module file of this project and each `--flag` written after it is in that
module's source (or a project module it imports, e.g. the source flags
`pipeline/configs.py` adds to both runners); every `make <target>` is a
target of the Makefile, and the flags in its `ARGS=...` are the flags of
the module that target runs.
"""

import glob
import os
import re
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(PROJECT_DIR, "README.md")
DOCS_DIR = os.path.join(PROJECT_DIR, "docs")
MAKEFILE = os.path.join(PROJECT_DIR, "Makefile")
README_MAX_LINES = 200

# Flags every argparse command has.
BUILTIN_FLAGS = {"--help"}

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_INLINE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
_PYTHON_M = re.compile(r"(?:^|[\s/\"'])python[\d.]*\s+-m\s+([\w.<>]+)(.*)", re.S)
_FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")
_MAKE = re.compile(r"^\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*make\s+(.*)$", re.S)
_ARGS = re.compile(r"""(?:^|\s)ARGS=("(?:[^"\\]|\\.)*"|'[^']*'|\S+)""")


def read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def pages() -> List[str]:
  return [README] + sorted(glob.glob(os.path.join(DOCS_DIR, "*.md")))


def guides() -> List[str]:
  return sorted(glob.glob(os.path.join(DOCS_DIR, "*.md")))


def rel(path: str) -> str:
  return os.path.relpath(path, PROJECT_DIR)


def prose(text: str) -> str:
  """The text without code (fenced blocks, inline spans)."""
  return _INLINE.sub("code", _FENCE.sub("", text))


def links(path: str) -> List[str]:
  """The targets of the page's links and images, outside code."""
  return _LINK.findall(prose(read(path)))


def is_external(target: str) -> bool:
  return re.match(r"^[a-z][a-z0-9+.-]*:", target) is not None  # http:, mailto:, ...


def anchors(path: str) -> Set[str]:
  """GitHub's ids of the page's headings."""
  found = set()
  for line in _FENCE.sub("", read(path)).splitlines():
    heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if heading:
      slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
      found.add(slug)
  return found


def commands(text: str) -> Iterator[str]:
  r"""Each shell command the page shows: a line of a fenced block (with its
  `\` continuations joined), or an inline code span; a `$(...)` inside one
  is a command of its own."""
  spans = []
  for block in _FENCE.findall(text):
    spans += block.replace("\\\n", " ").splitlines()
  spans += [" ".join(span.split()) for span in _INLINE.findall(_FENCE.sub("", text))]
  for span in spans:
    rest = span
    while True:
      inner = _SUBSTITUTION.findall(rest)
      if not inner:
        break
      yield from _pieces(" ".join(inner))
      rest = _SUBSTITUTION.sub("SUBSTITUTION", rest)
    yield from _pieces(rest)


def _pieces(command: str) -> Iterator[str]:
  command = re.sub(r"(^|\s)#.*$", "", command)  # a trailing shell comment
  for piece in re.split(r"&&|\|\||;|\|", command):
    if piece.strip():
      yield piece.strip()


def python_m_commands(path: str) -> List[Tuple[str, List[str]]]:
  """(module, [--flags written after it]) of each `python -m` command."""
  found = []
  for command in commands(read(path)):
    m = _PYTHON_M.search(command)
    if m:
      found.append((m.group(1), [f.split("=")[0] for f in _FLAG.findall(m.group(2))]))
  return found


def make_commands(path: str) -> List[Tuple[str, List[str]]]:
  """(target, [--flags in its ARGS=...]) of each `make <target>` command."""
  found = []
  for command in commands(read(path)):
    m = _MAKE.match(command)
    if not m:
      continue
    words = [w for w in m.group(1).split() if "=" not in w and not w.startswith("-")]
    if not words:
      continue
    args = _ARGS.search(" " + m.group(1))
    found.append((words[0], _FLAG.findall(args.group(1)) if args else []))
  return found


def module_file(module: str) -> str:
  """The project file of a module, or "" when there is none."""
  base = os.path.join(PROJECT_DIR, *module.split("."))
  for candidate in (base + ".py", os.path.join(base, "__main__.py")):
    if os.path.isfile(candidate):
      return candidate
  return ""


def imported_project_files(source: str) -> List[str]:
  """The project's module files `source` imports directly."""
  files = []
  for line in source.splitlines():
    m = re.match(r"^\s*from\s+([\w.]+)\s+import\s+\(?([\w\s,]*)", line)
    names = []
    if m:
      package, names = m.group(1), [n.strip() for n in m.group(2).split(",")]
    else:
      m = re.match(r"^\s*import\s+([\w.]+)", line)
      if not m:
        continue
      package = m.group(1)
    for module in [package] + [f"{package}.{n}" for n in names if n]:
      path = module_file(module) or (
          os.path.join(PROJECT_DIR, *module.split("."), "__init__.py")
          if os.path.isfile(os.path.join(PROJECT_DIR, *module.split("."), "__init__.py"))
          else ""
      )
      if path and path.startswith(PROJECT_DIR) and "/.venv/" not in path:
        files.append(path)
  return files


def flag_sources(module: str) -> Tuple[str, List[str]]:
  """(the module's own source, the sources its flags may come from)."""
  own = read(module_file(module))
  return own, [own] + [read(p) for p in imported_project_files(own)]


def defines_flag(module: str, flag: str) -> bool:
  """Whether `flag` is in the module's source or an imported project
  module's; a runner that makes flags from dataclass fields
  (`"--" + name.replace("_", "-")`) defines those of its fields too."""
  own, sources = flag_sources(module)
  quoted = re.compile(r"[\"']" + re.escape(flag) + r"[\"']")
  if any(quoted.search(s) for s in sources):
    return True
  if 'replace("_", "-")' in own:
    field = re.compile(r"^\s*" + re.escape(flag[2:].replace("-", "_")) + r"\s*:", re.M)
    return any(field.search(s) for s in sources)
  return False


def makefile_targets() -> Dict[str, str]:
  """{target: the module its recipe runs with `$(PY) -m`, or ""}."""
  targets, current = {}, None
  for line in read(MAKEFILE).splitlines():
    m = re.match(r"^([A-Za-z][\w-]*)\s*:(?!=)", line)
    if m:
      current = m.group(1)
      targets[current] = ""
    elif line.startswith("\t") and current:
      run = re.search(r"\$\(PY\)\s+-m\s+([\w.]+)", line)
      if run and not targets[current]:
        targets[current] = run.group(1)
    elif line.strip() and not line.startswith("\t"):
      current = None
  return targets


# --------------------------------------------------------------------------
def test_the_readme_is_at_most_200_lines():
  lines = read(README).count("\n")
  assert lines <= README_MAX_LINES, (
      f"README.md has {lines} lines (at most {README_MAX_LINES}): move details to a "
      "guide in docs/ and link it"
  )


def test_there_are_guides_and_the_readme_links_each():
  assert guides(), "docs/ has no guide"
  linked = {
      os.path.normpath(os.path.join(PROJECT_DIR, t.split("#")[0]))
      for t in links(README)
      if not is_external(t)
  }
  missing = [rel(g) for g in guides() if os.path.normpath(g) not in linked]
  assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_relative_links_and_images_point_at_existing_files(page):
  broken = []
  for target in links(page):
    if is_external(target):
      continue
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.isfile(full):
      broken.append(f"{target}: no file {rel(full)}")
    elif anchor and full.endswith(".md") and anchor not in anchors(full):
      broken.append(f"{target}: {rel(full)} has no heading #{anchor}")
  assert not broken, f"{rel(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_python_m_commands_name_project_modules_and_their_flags(page):
  problems = []
  for module, flags in python_m_commands(page):
    if "<" in module:  # a placeholder, e.g. benchmarks.<name>
      continue
    if not module_file(module):
      problems.append(f"python -m {module}: no {module.replace('.', '/')}.py")
      continue
    problems += [
        f"python -m {module} {flag}: not in {module.replace('.', '/')}.py "
        "nor a module it imports"
        for flag in flags
        if flag not in BUILTIN_FLAGS and not defines_flag(module, flag)
    ]
  assert not problems, f"{rel(page)}: " + "; ".join(problems)


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_make_targets_exist_and_their_args_are_the_modules_flags(page):
  targets = makefile_targets()
  problems = []
  for target, flags in make_commands(page):
    if target not in targets:
      problems.append(f"make {target}: no such target (the Makefile has {sorted(targets)})")
      continue
    module = targets[target]
    problems += [
        f"make {target} ARGS=... {flag}: not a flag of {module}"
        for flag in flags
        if not (module and module_file(module) and defines_flag(module, flag))
    ]
  assert not problems, f"{rel(page)}: " + "; ".join(problems)


def test_the_commands_are_found():
  """The checks above see the commands: a parser that found none would pass."""
  shown = {m for page in pages() for m, _ in python_m_commands(page)}
  assert {
      "serving.embed",
      "serving.search",
      "pipeline.runs",
      "pipeline.local_runner",
      "pipeline.vertex_runner",
  } <= shown
  embed_flags = {
      f
      for page in pages()
      for m, flags in python_m_commands(page)
      if m == "serving.embed"
      for f in flags
  }
  assert {"--model-dir", "--images", "--examples", "--split", "--out"} <= embed_flags
  targets = {t for page in pages() for t, _ in make_commands(page)}
  assert {"pipeline", "test", "serve"} <= targets


def test_the_signature_table_is_the_same_in_the_readme_and_the_serving_guide():
  def rows(path):
    return [
        line
        for line in read(path).splitlines()
        if re.match(r"^\| `(serving_default|embed_examples|classify_examples)` \|", line)
    ]

  readme = rows(README)
  assert len(readme) == 3
  assert "20-NN votes" in readme[2]
  assert readme == rows(os.path.join(DOCS_DIR, "serving.md"))
