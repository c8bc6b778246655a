"""What a fold is trained against and scored by: the loss (cross-entropy or the released focal loss) and the test
metrics (confusion matrix, macro-F1)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """The released code's focal loss: mean of α·(1 − p_t + 1e-6)^γ · CE."""
    ce = F.cross_entropy(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    return (alpha * (1 - p_t + 1e-6) ** gamma * ce).mean()


def loss_of(logits: torch.Tensor, target: torch.Tensor, hp: dict) -> torch.Tensor:
    if hp["loss"] == "focal":
        return focal_loss(logits, target, hp["focal_alpha"], hp["focal_gamma"])
    return F.cross_entropy(logits, target)


def confusion(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth, pred), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class never seen nor predicted scores 0."""
    tp = np.diag(matrix).astype(float)
    denominator = 2 * tp + (matrix.sum(axis=0) - tp) + (matrix.sum(axis=1) - tp)
    return float(np.mean(np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)))
