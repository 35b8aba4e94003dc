"""Evaluation of frozen I-JEPA representations: feature extraction, linear probe, k-NN, collapse measures, the
online monitor used during pretraining and the end-of-training report. Protocols: docs/evaluation.md.

>>> from openjepa.eval import load_encoder, extract_features, linear_probe     # doctest: +SKIP
>>> encoder = load_encoder("runs/digits/jepa-latest.pth.tar")                  # target encoder  # doctest: +SKIP
>>> result = linear_probe(extract_features(encoder, train_ds), extract_features(encoder, test_ds))  # doctest: +SKIP
>>> print(result.line())                                                        # doctest: +SKIP
"""

from ..config_sections import EvalConfig
from ..pretrained import LoadedEncoder, load_encoder, read_encoder
from .baseline import random_init_like
from .collapse import check_collapse, collapse_warning, feature_std, rankme
from .features import Features, extract_features, load_features, pool_features, resolve_device, save_features
from .knn import KnnResult, knn_classify
from .lowshot import LowShot, LowShotResult, low_shot_knn, low_shot_linear, over_draws
from .online_monitor import OnlineMonitor
from .probe import LinearClassifier, ProbeResult, linear_probe
from .report import FinalReport, final_report
from .subsets import low_shot_subset, stratified_split, stratified_subset

__all__ = [
    "EvalConfig",
    "Features",
    "FinalReport",
    "KnnResult",
    "LinearClassifier",
    "LoadedEncoder",
    "LowShot",
    "LowShotResult",
    "OnlineMonitor",
    "ProbeResult",
    "check_collapse",
    "collapse_warning",
    "extract_features",
    "feature_std",
    "final_report",
    "knn_classify",
    "linear_probe",
    "load_encoder",
    "load_features",
    "low_shot_knn",
    "low_shot_linear",
    "low_shot_subset",
    "over_draws",
    "pool_features",
    "random_init_like",
    "rankme",
    "read_encoder",
    "resolve_device",
    "save_features",
    "stratified_split",
    "stratified_subset",
]
