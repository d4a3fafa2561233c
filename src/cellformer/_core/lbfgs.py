"""Full-batch multinomial logistic regression by L-BFGS, and C chosen by cross-validation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

__all__ = ["C_GRID", "balanced_weights", "choose_C", "fit_balanced_logistic", "fit_logistic"]

#: Inverse L2 strengths tried when ``C="auto"`` (log-spaced, as scikit-learn's Cs).
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def fit_logistic(
    X: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    C: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise scikit-learn's class-weighted multinomial objective, divided by ``C * n``.

    ``sum_i w_i CE_i / sum_i w_i + ||W||² / (2 C n)``: with balanced weights (``sum w = n``) the
    minimiser is ``LogisticRegression(C=C, class_weight="balanced")``'s.

    Parameters
    ----------
    X
        ``(cells, genes)`` standardised expression.
    y
        ``(cells,)`` class codes in ``[0, n_classes)``.
    weights
        ``(n_classes,)`` class weights.
    C
        Inverse L2 strength.
    init
        Warm start ``(W, b)``, e.g. the solution for a neighbouring ``C``.
    max_iter, tol
        L-BFGS iterations and tolerance on the largest gradient entry (scikit-learn's ``lbfgs``
        uses 1e-4 on the same, averaged objective).

    Returns
    -------
    ``(W, b)``: ``(n_classes, genes)`` weights and ``(n_classes,)`` biases.
    """
    n, g = X.shape
    k = weights.shape[0]
    W = torch.zeros(k, g, dtype=X.dtype, device=X.device)
    b = torch.zeros(k, dtype=X.dtype, device=X.device)
    if init is not None:
        W, b = init[0].clone().to(X), init[1].clone().to(X)
    W.requires_grad_(True)
    b.requires_grad_(True)
    w = weights.to(X)[y]
    w_sum = w.sum().clamp_min(1e-12)
    l2 = 1.0 / (C * n)
    optimizer = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        ce = F.cross_entropy(X @ W.T + b, y, reduction="none")
        loss = (w * ce).sum() / w_sum + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return W.detach(), b.detach()


def choose_C(
    X: torch.Tensor,
    y: np.ndarray,
    n_classes: int,
    grid=C_GRID,
    n_folds: int = 5,
    seed: int | None = 0,
) -> tuple[float, dict[float, float]]:
    """Pick ``C`` by stratified k-fold macro-F1 on the training cells (warm starts along the grid).

    Class weights are recomputed on each fold's training part. Returns ``(best C, scores)``.
    """
    counts = np.bincount(y, minlength=n_classes)
    n_folds = int(min(n_folds, counts[counts > 0].min()))
    if n_folds < 2:  # a class with a single cell: no cross-validation possible
        return 1.0, {}
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    yt = torch.as_tensor(y, device=X.device)
    scores = {c: [] for c in grid}
    for fit_idx, test_idx in folds:
        fit_t = torch.as_tensor(fit_idx, device=X.device)
        weights = balanced_weights(y[fit_idx], n_classes)
        init = None
        for c in sorted(grid):
            init = fit_logistic(X[fit_t], yt[fit_t], weights, c, init=init)
            pred = (X[torch.as_tensor(test_idx, device=X.device)] @ init[0].T + init[1]).argmax(1)
            scores[c].append(f1_score(y[test_idx], pred.cpu().numpy(), average="macro"))
    mean = {c: float(np.mean(v)) for c, v in scores.items()}
    best = max(sorted(grid), key=lambda c: (round(mean[c], 6), -c))  # ties: stronger L2
    return best, mean


def balanced_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """``n / (n_classes * n_c)`` for classes present, 0 for absent ones."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


def fit_balanced_logistic(
    X: torch.Tensor,
    y: np.ndarray,
    n_classes: int,
    C: float | str = "auto",
    seed: int | None = 0,
    cv_max_cells: int = 5_000,
) -> tuple[torch.Tensor, torch.Tensor, float, dict[float, float]]:
    """Class-balanced multinomial logistic regression on standardised ``X``, ``C`` by CV if "auto".

    ``C="auto"`` is chosen by :func:`choose_C` on a seeded subsample of at most ``cv_max_cells``
    cells; the final fit uses every cell. Returns ``(W, b, C, cross-validation scores)``.
    """
    from cellformer._utils import subsample

    weights = balanced_weights(y, n_classes)
    if C == "auto":
        cv = subsample(np.arange(len(y)), cv_max_cells, seed)
        C, scores = choose_C(X[torch.as_tensor(cv, device=X.device)], y[cv], n_classes, seed=seed)
    else:
        C, scores = float(C), {}
    W, b = fit_logistic(X, torch.as_tensor(y, device=X.device), weights, C)
    return W, b, C, scores
