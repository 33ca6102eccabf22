"""Vertex AI Vector Search's side of search: the corpus in its input format
and the request that creates an index over it.

Input files: JSON lines of {"id", "embedding", "restricts"} in one folder
(the index's contentsDeltaUri), each file named *.json; the image's class
and the span it came in are `restricts` entries in the "class" and "span"
namespaces, so a query can be limited to classes and spans (the local
server's `:neighbors` takes the same filters: `models.search_index.Restricts`). Format:
https://cloud.google.com/vertex-ai/docs/vector-search/setup/format-structure

The index is tree-AH (ScaNN, as `models.search_index` builds locally) over
unit-normalised vectors ranked by dot product, i.e. the cosine similarity
the local index and the server's `score` use.
"""

import json
from typing import Any, Dict, Sequence

CLASS_NAMESPACE, SPAN_NAMESPACE = "class", "span"
NAMESPACES = (CLASS_NAMESPACE, SPAN_NAMESPACE)
FOLDER = "vector_search"  # in the Embeddings artifact; the contentsDeltaUri
FILE_SUFFIX = ".json"
# Vector Search's own defaults, written out so the request says what it builds.
LEAF_NODE_EMBEDDING_COUNT = 1000
LEAF_NODES_TO_SEARCH_PERCENT = 10


def json_line(image_id: str, class_name: str, vector: Sequence[float], span: str = "") -> str:
  """One datapoint; an image without a class (unlabeled) has no class
  restrict, one of unknown span no span restrict."""
  record: Dict[str, Any] = {"id": image_id, "embedding": [float(v) for v in vector]}
  restricts = [
      {"namespace": namespace, "allow": [token]}
      for namespace, token in ((CLASS_NAMESPACE, class_name), (SPAN_NAMESPACE, span))
      if token
  ]
  if restricts:
    record["restricts"] = restricts
  return json.dumps(record)


def index_arguments(
    display_name: str, contents_uri: str, dimensions: int, neighbours: int
) -> Dict[str, Any]:
  """`aiplatform.MatchingEngineIndex.create_tree_ah_index`'s arguments for
  the corpus in `contents_uri` (a folder of `json_line` files)."""
  from google.cloud.aiplatform.matching_engine import matching_engine_index_config as mei

  return dict(
      display_name=display_name,
      contents_delta_uri=contents_uri,
      dimensions=dimensions,
      approximate_neighbors_count=neighbours,
      distance_measure_type=mei.DistanceMeasureType.DOT_PRODUCT_DISTANCE,
      feature_norm_type=mei.FeatureNormType.UNIT_L2_NORM,
      leaf_node_embedding_count=LEAF_NODE_EMBEDDING_COUNT,
      leaf_nodes_to_search_percent=LEAF_NODES_TO_SEARCH_PERCENT,
      index_update_method="BATCH_UPDATE",
  )


def create_index_request(project: str, region: str, arguments: Dict[str, Any]) -> Dict[str, Any]:
  """The REST request `create_index(project, region, arguments)` sends
  (IndexService.CreateIndex), built from the SDK's own types without the
  network."""
  from google.cloud.aiplatform.compat.types import index as gca_index
  from google.protobuf import json_format
  from google.cloud.aiplatform.matching_engine import matching_engine_index_config as mei

  config = mei.MatchingEngineIndexConfig(
      dimensions=arguments["dimensions"],
      algorithm_config=mei.TreeAhConfig(
          leaf_node_embedding_count=arguments["leaf_node_embedding_count"],
          leaf_nodes_to_search_percent=arguments["leaf_nodes_to_search_percent"],
      ),
      approximate_neighbors_count=arguments["approximate_neighbors_count"],
      distance_measure_type=arguments["distance_measure_type"],
      feature_norm_type=arguments["feature_norm_type"],
  )
  metadata = config.as_dict()
  for key in ("distanceMeasureType", "featureNormType"):
    metadata[key] = metadata[key].value
  index = gca_index.Index(
      display_name=arguments["display_name"],
      metadata={"config": metadata, "contentsDeltaUri": arguments["contents_delta_uri"]},
      index_update_method=gca_index.Index.IndexUpdateMethod[arguments["index_update_method"]],
  )
  parent = f"projects/{project}/locations/{region}"
  return {
      "method": "POST",
      "url": f"https://{region}-aiplatform.googleapis.com/v1/{parent}/indexes",
      "body": json_format.MessageToDict(gca_index.Index.pb(index)),
  }


def create_index(project: str, region: str, arguments: Dict[str, Any]):
  """Creates the index (a long-running operation; waits for it)."""
  from google.cloud import aiplatform

  return aiplatform.MatchingEngineIndex.create_tree_ah_index(
      project=project, location=region, **arguments
  )
