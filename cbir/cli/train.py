"""``cbir train-autoencoder``: train the autoencoder extractor on a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cbir.cli._common import (
    JsonOption,
    handle_errors,
    print_json,
    progress_bar,
    show_training_epochs,
)


@handle_errors
def train_autoencoder_command(
    folder: Annotated[Path, typer.Argument(help="Folder of training images, searched recursively.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for model.keras, history.json, loss.png and checkpoints.", file_okay=False)],
    input_size: Annotated[int, typer.Option("--input-size", min=8, help="Images are resized to this square side.")] = 64,
    grey: Annotated[bool, typer.Option("--grey", help="Train on greyscale images.")] = False,
    filters: Annotated[str, typer.Option("--filters", help="Filters of the encoder blocks, each halving the size.")] = "32,64,128,256",
    latent_channels: Annotated[int, typer.Option("--latent-channels", min=1, help="Channels of the bottleneck.")] = 64,
    noise: Annotated[float, typer.Option("--noise", min=0.0, help="Gaussian noise on training inputs (0: plain autoencoder).")] = 0.1,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random flips and small shifts while training.")] = True,
    batch_norm: Annotated[bool, typer.Option("--batch-norm/--no-batch-norm", help="BatchNorm after each convolution.")] = True,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Most epochs (training stops early when validation loss stalls).")] = 40,
    patience: Annotated[int, typer.Option("--patience", min=1, help="Epochs without improvement before stopping.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per training step.")] = 32,
    validation_split: Annotated[float, typer.Option("--validation-split", min=0.0, max=0.9, help="Share of images held out for validation.")] = 0.1,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0, help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed, images and options give the same model.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a model that --out holds from another folder or other options.")] = False,
    name: Annotated[
        Optional[str],
        typer.Option("--name", "-n", help="Not taken: training builds a model, not an index (the error says how to index with it).", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Train a denoising autoencoder on FOLDER; run again after an interruption to resume.

    An --out that holds the training of another folder or other options is
    refused (use --overwrite); the same training is resumed, or returned at once.

    Use the model with 'cbir index PHOTOS/ --extractor autoencoder --model OUT'.
    """
    from cbir.errors import UsageError

    if name is not None:  # every command takes --name; here it can only say where the index comes from
        raise UsageError(
            f"train-autoencoder builds a model, not an index: train, then 'cbir index {folder} --name {name} --extractor autoencoder --model {out}'"
        )
    from cbir.features.autoencoder import (
        HISTORY_FILE,
        LOSS_PLOT_FILE,
        MODEL_FILE,
    )
    from cbir.indexing.train import train_autoencoder

    show_training_epochs()
    try:
        filter_list = [int(f) for f in filters.split(",")]
    except ValueError:
        raise UsageError(f"--filters must look like 32,64,128,256, got {filters!r}") from None
    trained = train_autoencoder(
        folder,
        out,
        progress=progress_bar(),
        overwrite=overwrite,
        input_size=input_size,
        channels=1 if grey else 3,
        filters=filter_list,
        latent_channels=latent_channels,
        noise=noise,
        augment=augment,
        batch_norm=batch_norm,
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        validation_split=validation_split,
        learning_rate=learning_rate,
        seed=seed,
    )
    history = trained.history_ or {}
    epochs_run = history.get("epochs", [])
    best = epochs_run[history["best_epoch"] - 1] if history.get("best_epoch") else None
    files = {"model": str(out / MODEL_FILE), "history": str(out / HISTORY_FILE), "loss_plot": str(out / LOSS_PLOT_FILE)}
    if as_json:
        print_json({"epochs": len(epochs_run), "best_epoch": best, **files})
        return
    summary = f"trained {len(epochs_run)} epoch(s)"
    if best is not None:
        summary += f"; best epoch {best['epoch']}: " + ", ".join(f"{k} {best[k]:.5f}" for k in ("loss", "val_loss") if k in best)
    print(summary)
    for label, path in files.items():
        print(f"{label:10} {path}")
