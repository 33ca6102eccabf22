"""mae-tfx: a TFX pipeline that pretrains a Masked Autoencoder and serves embeddings.

Install exactly the tested set:  pip install -c requirements.lock -e .
"""

from setuptools import find_packages, setup

setup(
    name="mae-tfx",
    version="0.1.0",
    description="TFX pipeline: MAE pretraining, linear probe, TFMA gate, embedding SavedModel",
    python_requires=">=3.10,<3.11",
    packages=find_packages(
        include=[
            "pipeline",
            "pipeline.*",
            "components",
            "components.*",
            "models",
            "models.*",
            "serving",
            "serving.*",
        ]
    ),
    # serving/page/: the search page's HTML, script and style, served by the server.
    package_data={"": ["*.pbtxt"], "serving": ["page/*.html", "page/*.js", "page/*.css"]},
    install_requires=[
        "tfx==1.16.0",
        "dill",  # tfx-bsl 1.16 imports it; apache-beam 2.74 no longer brings it
        "pillow",
        "aiohttp",  # the embedding server (serving/): REST
        "orjson",  # ... its JSON, numpy arrays written in C
        "prometheus-client",  # ... its metrics (serving/metrics.py)
        "grpcio",  # ... and TF Serving's gRPC API, with its messages
        "tensorflow-serving-api",
        "scikit-learn",  # t-SNE (pipeline/figures.py), logistic regression (benchmarks)
        "scann==1.3.2",  # the search index (models/search_index.py): the build for TF 2.16
        "faiss-cpu",  # the alternative index kind, measured beside ScaNN
        "tqdm",  # batch embedding progress bar
        "matplotlib",  # the run's pictures (pipeline/figures.py: report, notebooks)
        "kfp-pipeline-spec",  # KubeflowV2DagRunner (Vertex AI Pipelines); the
        # kfp SDK itself conflicts with TFX 1.16's pins
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",  # `make test`'s two worker processes
            "requests",
            "hypothesis",
            "selenium",  # drives Debian's headless Chromium over the search page
            "pyink",  # `make lint`: the formatter ...
            "ruff",  # ... and the linter
        ]
    },
)
