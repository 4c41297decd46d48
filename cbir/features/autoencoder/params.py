"""The autoencoder's hyperparameters: what values they accept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cbir.errors import UsageError

#: Accepted values of ``embedding``.
EMBEDDINGS = ("pool", "flatten")
#: Accepted values of ``runtime``; ``auto`` is LiteRT.
RUNTIMES = ("auto", "tflite", "openvino", "keras")
#: The one file format accepted for autoencoder models (HDF5 ignores Keras' safe mode).
MODEL_SUFFIX = ".keras"


def check_params(params: dict[str, Any]) -> None:
    """Raise :class:`UsageError` naming the first hyperparameter that cannot work."""

    def positive_int(name: str) -> None:
        value = params[name]
        if not _is_int(value) or value < 1:
            raise UsageError(f"autoencoder {name} must be a positive integer, got {value!r}")

    for name in ("input_size", "latent_channels", "epochs", "batch_size", "patience"):
        positive_int(name)
    if params['channels'] not in (1, 3):
        raise UsageError(f"autoencoder channels must be 3 (colour) or 1 (greyscale), got {params['channels']!r}")
    filters = params['filters']
    if isinstance(filters, (str, bytes)) or not isinstance(filters, Sequence) or not filters:
        raise UsageError(f"autoencoder filters must be a non-empty list of positive integers, got {filters!r}")
    if not all(_is_int(f) and f >= 1 for f in filters):
        raise UsageError(f"autoencoder filters must be positive integers, got {list(filters)!r}")
    step = 2 ** len(filters)
    if params['input_size'] % step:
        raise UsageError(
            f"autoencoder input_size {params['input_size']} must be divisible by 2**{len(filters)} = {step} "
            f"({len(filters)} blocks each halve the resolution)"
        )
    if not isinstance(params['noise'], (int, float)) or isinstance(params['noise'], bool) or not 0 <= params['noise'] <= 1:
        raise UsageError(f"autoencoder noise must be between 0 and 1, got {params['noise']!r}")
    for name in ("augment", "batch_norm"):
        if not isinstance(params[name], bool):
            raise UsageError(f"autoencoder {name} must be true or false, got {params[name]!r}")
    if not isinstance(params['validation_split'], (int, float)) or not 0 <= params['validation_split'] < 1:
        raise UsageError(f"autoencoder validation_split must be in [0, 1), got {params['validation_split']!r}")
    if not isinstance(params['learning_rate'], (int, float)) or not params['learning_rate'] > 0:
        raise UsageError(f"autoencoder learning_rate must be positive, got {params['learning_rate']!r}")
    if not _is_int(params['seed']):
        raise UsageError(f"autoencoder seed must be an integer, got {params['seed']!r}")
    if params['embedding'] not in EMBEDDINGS:
        raise UsageError(f"autoencoder embedding must be one of {', '.join(EMBEDDINGS)}, got {params['embedding']!r}")
    if params['model_path'] is not None and not isinstance(params['model_path'], (str, os.PathLike)):
        raise UsageError(f"autoencoder model_path must be a path, got {params['model_path']!r}")
    if params['model_path'] is not None and Path(params['model_path']).suffix != MODEL_SUFFIX:
        raise UsageError(f"autoencoder models must be {MODEL_SUFFIX} files, got {params['model_path']}")
    if params['runtime'] not in RUNTIMES:
        raise UsageError(f"autoencoder runtime must be one of {', '.join(RUNTIMES)}, got {params['runtime']!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
