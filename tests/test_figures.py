"""The run pictures' graph helpers (the pictures themselves are drawn from a
real run in test_pipeline_e2e)."""

import numpy as np

from pipeline import figures, runs


def _row(node, inputs=(), outputs=()):
  return dict(node=node, inputs={"T": list(inputs)}, outputs={"T": list(outputs)})


def test_run_edges_follow_the_artifacts_between_executions():
  rows = [
      _row("ExampleGen", outputs=["examples"]),
      _row("StatisticsGen", ["examples"], ["stats"]),
      _row("Transform", ["examples"], ["graph"]),
      _row("Trainer", ["examples", "graph", "from-an-earlier-run"], ["model"]),
  ]
  assert runs.run_edges(rows) == [
      ("ExampleGen", "StatisticsGen"),
      ("ExampleGen", "Trainer"),
      ("ExampleGen", "Transform"),
      ("Transform", "Trainer"),
  ]


def test_transitive_reduction_keeps_only_edges_no_longer_path_implies():
  edges = [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("a", "d"), ("e", "d")]
  assert figures.transitive_reduction(edges) == [("a", "b"), ("b", "c"), ("c", "d"), ("e", "d")]


def test_neighbour_queries_are_the_first_image_of_each_class_present():
  labels = np.array([3, 1, 3, 0, 1])
  assert figures.one_per_class(labels, 5) == [3, 1, 0]
