"""Convolutional denoising autoencoder: features learned from the collection itself.

One job per module: :mod:`.model` (the network and its files),
:mod:`.training` (the resumable training loop; training on a folder is
:mod:`cbir.indexing.train`),
:mod:`.history` (the training record and loss plot) and :mod:`.extractor`
(the extractor the registry names). Importing this package imports no
TensorFlow.
"""

from cbir.features.autoencoder.extractor import AutoencoderExtractor
from cbir.features.autoencoder.params import EMBEDDINGS, RUNTIMES
from cbir.features.autoencoder.history import HISTORY_FILE, LOSS_PLOT_FILE, plot_losses
from cbir.features.autoencoder.training import CHECKPOINT_DIR, MODEL_FILE

__all__ = [
    "CHECKPOINT_DIR",
    "EMBEDDINGS",
    "HISTORY_FILE",
    "LOSS_PLOT_FILE",
    "MODEL_FILE",
    "RUNTIMES",
    "AutoencoderExtractor",
    "plot_losses",
]
