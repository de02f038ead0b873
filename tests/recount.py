"""Figures counted again from saved files, to hold a recorded figure against
(``from recount import ...``; pytest puts ``tests/`` on ``sys.path``).

- :func:`recount`: top-1 and loss of a model on its run's val split, as the engine counts them;
- :func:`file_predictions`: the classes a saved model (ONNX file, run or fused folder) predicts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from reparam.app.dataspec import load_eval_data
from reparam.app.deploy.predict import open_model
from reparam.saved import preprocessing_of


def recount(model: nn.Module, config: dict) -> tuple[float, float]:
    """``(top-1, mean cross-entropy)`` of ``model`` on the val split of the run ``config``'s data,
    prepared by its recorded preprocessing and counted here, apart from the engine, in the
    engine's arithmetic (the run's batch size, bf16 autocast and channels-last layout), so every
    argmax is the one the engine took."""
    val = load_eval_data(config["data"], preprocessing_of(config)).val
    layout = torch.channels_last if config["channels_last"] else torch.contiguous_format
    model = model.eval().to(memory_format=layout)
    correct, loss, count = 0, 0.0, 0
    for images, labels in DataLoader(val, batch_size=config["batch_size"]):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=config["amp"]):
            logits = model(images.contiguous(memory_format=layout)).float()
        correct += int((logits.argmax(1) == labels).sum())
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += len(labels)
    return correct / count, loss / count


def file_predictions(path: Path, data: str) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted class, label)`` of each image of ``data``'s val split, the prediction made by
    the saved model ``path`` (ONNX file, run or fused folder) alone, on the images prepared by the
    preprocessing it records."""
    predictor = open_model(path)
    val = load_eval_data(data, predictor.preprocessing).val
    images, labels = zip(*(val[i] for i in range(len(val))))
    return predictor.run(torch.stack(images).numpy()).argmax(1), np.array(labels)
