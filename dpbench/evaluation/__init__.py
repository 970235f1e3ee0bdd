"""Evaluation: sampling, downstream classifiers, FID / precision / recall — the metrics alone, knowing
nothing of suites or runs (the runner's evaluation stage, dpbench/runner/evaluate.py, applies them to a run).

Light module: it only declares registry entries (no torch import). The public functions live in
``dpbench.evaluation.sampling`` (:func:`sample_images` with its :class:`SamplerSettings`),
``dpbench.evaluation.features`` (:func:`extract_features`), ``dpbench.evaluation.metrics``
(:func:`frechet_distance`, :func:`precision_recall`, :func:`image_quality`) and
``dpbench.evaluation.classifiers`` (:func:`train_and_evaluate` with its :class:`ClassifierTraining`).
"""

from dpbench.registry import CLASSIFIERS, FID_BACKBONES

FID_BACKBONES.register(
    "random_cnn",
    "dpbench.evaluation.features:load_random_cnn",
    "fixed-seed random CNN, 640-d, offline; FID comparable only within dpbench with this backbone, never to literature FID",
)
FID_BACKBONES.register(
    "inception",
    "dpbench.evaluation.features:load_inception",
    "standard FID Inception-v3 pool3 (2048-d) via torch-fidelity; needs pip install 'dpbench[fid]' and the weights",
)

CLASSIFIERS.register("cnn", "dpbench.evaluation.classifiers:small_cnn", "small 3-layer CNN (~95k params), fast on CPU for 16x16-32x32 inputs (default)")
CLASSIFIERS.register("wrn16_4", "dpbench.evaluation.classifiers:wrn16_4", "WideResNet-16-4 (~2.7M params), no dropout; GPU recommended")
