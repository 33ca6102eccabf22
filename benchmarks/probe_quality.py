"""Representation quality: pretrain N epochs, then linear probe and k-NN.

  python benchmarks/probe_quality.py --epochs 10            # MAE, 10 epochs
  python benchmarks/probe_quality.py --epochs 0             # random-init encoder
  python benchmarks/probe_quality.py --epochs 10 \
      --overrides '{"model": {"mask_ratio": 0.6}}'           # an ablation

Calls the pipeline's own Trainer run_fns (`models.mae_trainer.run_fn`, then
`models.probe_trainer.run_fn` with the MAE as base model) on the Examples and
Transform graph of the newest `make pipeline` run in the given MLMD
database, so there is no second copy of the model or of the training code.
Prints LP top-1 and k-NN (k=20, cosine) top-1 on the 10,000 test images,
the MAE images/second and the wall time of each stage.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2, before TF loads

import argparse
import json
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfx.components.trainer.fn_args_utils import FnArgs  # noqa: E402

from models import config as config_lib  # noqa: E402
from models import mae_trainer, probe_trainer  # noqa: E402
from pipeline import configs  # noqa: E402
from pipeline.report import pipeline_inputs, split_files  # noqa: E402


def fn_args(examples: str, transform: str, work: str, name: str,
            cfg: config_lib.RunConfig, base_model=None) -> FnArgs:
  serving = os.path.join(work, name, "Format-Serving")
  os.makedirs(serving, exist_ok=True)
  return FnArgs(
      train_files=split_files(examples, "train"),
      eval_files=split_files(examples, "test"),
      transform_output=transform, serving_model_dir=serving,
      model_run_dir=os.path.join(work, name, "run"), base_model=base_model,
      custom_config={config_lib.RUN_CONFIG_KEY: cfg.to_dict(),
                     config_lib.CHECKPOINT_ROOT_KEY: os.path.join(work, "ckpt")})


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--epochs", type=int, required=True)
  p.add_argument("--profile", default="cpu")
  p.add_argument("--overrides", default="{}")
  p.add_argument("--metadata", default=os.path.join(configs.PROJECT_DIR, "outputs",
                                                    "metadata.sqlite"))
  p.add_argument("--work-dir", default=None, help="keep models here (default: temp)")
  args = p.parse_args()

  overrides = json.loads(args.overrides)
  overrides.setdefault("pretrain", {})["epochs"] = args.epochs
  cfg = config_lib.get_profile(args.profile, overrides)
  examples, transform = pipeline_inputs(args.metadata)
  work = args.work_dir or tempfile.mkdtemp(prefix="probe_quality-")

  t0 = time.time()
  mae_args = fn_args(examples, transform, work, "mae", cfg)
  mae_trainer.run_fn(mae_args)
  t1 = time.time()
  probe_trainer.run_fn(fn_args(examples, transform, work, "probe", cfg,
                               base_model=mae_args.serving_model_dir))
  t2 = time.time()

  with open(os.path.join(work, "mae", "run", mae_trainer.SUMMARY_FILE)) as f:
    mae_summary = json.load(f)
  with open(os.path.join(work, "probe", "run", mae_trainer.SUMMARY_FILE)) as f:
    probe_summary = json.load(f)
  ips = [h["images_per_second"] for h in mae_summary["history"][1:]] or [
      h["images_per_second"] for h in mae_summary["history"]]
  print(json.dumps({"overrides": overrides, "profile": args.profile}))
  print(f"epochs {args.epochs}: LP top-1 {probe_summary['eval_accuracy']:.4f}, "
        f"kNN(k={probe_summary['knn_k']}) top-1 {probe_summary['knn_accuracy']:.4f}, "
        f"MAE {sum(ips) / len(ips) if ips else float('nan'):.0f} img/s, "
        f"pretrain {t1 - t0:.0f} s, probe {t2 - t1:.0f} s, models in {work}")


if __name__ == "__main__":
  main()
