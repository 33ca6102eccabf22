"""Pipeline configuration: names, paths, profile and gates, in one place.

Every value has a default and an environment variable; the runners' flags
override both. Model hyper-parameters live in `models/config.py` (profiles).
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional

from models import config as model_config

PIPELINE_NAME = "mae-tfx"
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_PATH = os.path.join(PROJECT_DIR, "schemas", "schema.pbtxt")

# Evaluator gates per profile: (lower bound on test accuracy, largest allowed
# drop against the last blessed model). The smoke model trains on a few
# hundred images for seconds, so its gate only rules out a broken model.
EVAL_GATES = {
    "smoke": (0.05, 0.5),
    "cpu": (0.45, 0.01),
    "full": (0.60, 0.005),
}

# DirectRunner in one process: on 2 cores the multi-process mode costs more in
# pickling than it gains, and in-process runs show errors with their traceback.
DEFAULT_BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@dataclasses.dataclass
class PipelineConfig:
  data_root: str                         # an extracted cifar-10-batches-py/
  output_dir: str = os.environ.get("MAE_TFX_OUTPUT",
                                   os.path.join(PROJECT_DIR, "outputs"))
  profile: str = os.environ.get("MAE_TFX_PROFILE", "cpu")
  pipeline_name: str = PIPELINE_NAME
  schema_path: str = SCHEMA_PATH
  min_accuracy: Optional[float] = None   # None: the profile's gate
  max_accuracy_drop: Optional[float] = None
  enable_cache: bool = True
  overrides: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
  beam_pipeline_args: List[str] = dataclasses.field(
      default_factory=lambda: list(DEFAULT_BEAM_ARGS))

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.output_dir, "pipeline_root")

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.output_dir, "metadata.sqlite")

  @property
  def serving_model_dir(self) -> str:
    return os.path.join(self.output_dir, "serving_model", self.pipeline_name)

  @property
  def checkpoint_root(self) -> str:
    return os.path.join(self.output_dir, "checkpoints")

  @property
  def run_config(self) -> model_config.RunConfig:
    return model_config.get_profile(self.profile, self.overrides)

  @property
  def eval_gate(self):
    lower, drop = EVAL_GATES.get(self.profile, EVAL_GATES["cpu"])
    return (lower if self.min_accuracy is None else self.min_accuracy,
            drop if self.max_accuracy_drop is None else self.max_accuracy_drop)

  def trainer_custom_config(self) -> Dict[str, Any]:
    return {model_config.RUN_CONFIG_KEY: self.run_config.to_dict(),
            model_config.CHECKPOINT_ROOT_KEY: self.checkpoint_root}
