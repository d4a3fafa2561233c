"""Shared plumbing of cellformer's classifier modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from cellformer._core import TARGET_SUM
from cellformer._errors import ParameterError
from cellformer.nn import BayesianLinear, Dropout, NoveltyScorer

__all__ = ["ClassifierModuleBase", "LinearPathModuleMixin", "NewHeadMixin"]


class ClassifierModuleBase(BaseModuleClass):
    """Base of the classifier modules: input normalisation, class-weighted loss, scvi-tools hooks.

    Subclasses implement :meth:`encode` (log-normalised expression → cell representation) and
    :meth:`classify` (representation → logits).

    Parameters
    ----------
    n_input
        Number of genes.
    n_labels
        Number of cell types.
    input_kind
        ``"counts"``: the registered layer holds raw counts, log-normalised here per minibatch;
        ``"lognorm"``: it is used as is.
    class_balance
        Weight the loss by inverse class frequency (the weights are set by the model from the
        training cells); ``False``: plain cross-entropy.
    kl_weight
        Weight of the KL term of Bayesian layers (:class:`~cellformer.nn.BayesianLinear`), if any:
        the loss per cell is ``CE + kl_weight * kl_scale * KL / n_train``, the evidence lower bound
        scaled to one cell. ``kl_scale`` is annealed from 0 to 1 by the training plan.
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        input_kind: str = "lognorm",
        class_balance: bool = True,
        kl_weight: float = 1.0,
    ):
        super().__init__()
        if input_kind not in ("counts", "lognorm"):
            raise ParameterError(f"input_kind must be 'counts' or 'lognorm', got {input_kind!r}.")
        self.n_input = n_input
        self.n_labels = n_labels
        self.input_kind = input_kind
        self.class_balance = class_balance
        # class weights for the loss; set from the training cells by the model
        self.register_buffer("class_weights", torch.ones(n_labels))
        # confidence below which a cell is "Unknown"; chosen on the validation split (NaN: none)
        self.register_buffer("unknown_threshold", torch.tensor(float("nan")))
        # temperature dividing the logits at prediction (temperature scaling); 1 = none
        self.register_buffer("temperature", torch.tensor(1.0))
        # distance to the training cells in expression space; fit by the model after training
        self.novelty = NoveltyScorer(n_input)
        self.kl_weight = kl_weight
        self.kl_scale = 1.0  # annealed by the training plan
        self.aux_weight = 1.0  # weight of an auxiliary classifier's loss, when a module has one
        self.n_train = 1  # training cells, set by the model: the KL is spread over them

    # -- hooks for subclasses -------------------------------------------------------------------
    def encode(self, x: torch.Tensor, batch_index: torch.Tensor | None = None) -> torch.Tensor:
        """Map log-normalised expression ``(cells, genes)`` to a representation ``(cells, d)``.

        ``batch_index`` ``(cells,)`` holds batch codes for modules that use them.
        """
        raise NotImplementedError

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Map a representation to class logits ``(cells, n_labels)``."""
        raise NotImplementedError

    def penalty(self) -> torch.Tensor:
        """Regularisation added to the loss (per cell); zero by default."""
        return torch.zeros((), device=self.class_weights.device)

    @property
    def bayesian_layers(self) -> list[BayesianLinear]:
        """The module's Bayesian layers."""
        return [m for m in self.modules() if isinstance(m, BayesianLinear)]

    def kl(self) -> torch.Tensor:
        """KL divergence of all Bayesian layers from their priors (0 without any)."""
        total = torch.zeros((), device=self.class_weights.device)
        for layer in self.bayesian_layers:
            total = total + layer.kl()
        return total

    # -- scvi-tools BaseModuleClass interface --------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = tensors[REGISTRY_KEYS.X_KEY]
        if self.input_kind == "counts":
            # whole-transcriptome library sizes when registered (setup_anndata's library_size_key)
            library = tensors.get(REGISTRY_KEYS.SIZE_FACTOR_KEY)
            if library is None:
                library = x.sum(dim=1, keepdim=True)
            library = library.view(-1, 1).to(x.dtype).clamp_min(1e-12)
            x = torch.log1p(x / library * TARGET_SUM)
        return {"x": x, "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY)}

    def _get_generative_input(self, tensors, inference_outputs) -> dict:
        return {}

    @auto_move_data
    def inference(
        self, x: torch.Tensor, batch_index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Representation and logits of log-normalised expression ``x``."""
        z = self.encode(x, batch_index)
        return {"z": z, "logits": self.classify(z)}

    def generative(self) -> dict:
        """No generative part: cellformer modules are discriminative."""
        return {}

    def loss(self, tensors, inference_outputs, generative_outputs, **kwargs) -> LossOutput:
        """Class-weighted cross-entropy (weights normalised per minibatch) plus :meth:`penalty`."""
        logits = inference_outputs["logits"]
        y = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
        labelled = y < self.n_labels  # the unlabelled category sits after the real classes
        logits, y = logits[labelled], y[labelled]
        ce = F.cross_entropy(logits, y, reduction="none")
        w = self.class_weights[y] if self.class_balance else torch.ones_like(ce)
        classification = (w * ce).sum() / w.sum().clamp_min(1e-12)
        loss = classification + self.penalty()
        aux = inference_outputs.get("aux_logits")
        if aux is not None and self.training:
            # an auxiliary classifier of the pooled encoder output (training only: validation
            # judges the model's own predictions)
            aux_ce = F.cross_entropy(aux[labelled], y, reduction="none")
            loss = loss + self.aux_weight * (w * aux_ce).sum() / w.sum().clamp_min(1e-12)
        kl = None
        if self.bayesian_layers:
            kl = self.kl()
            loss = loss + self.kl_weight * self.kl_scale * kl / max(self.n_train, 1)
        return LossOutput(
            loss=loss,
            n_obs_minibatch=int(labelled.sum()),
            classification_loss=classification,
            kl_global=kl,
            logits=logits,
            true_labels=y,
        )

    @torch.inference_mode()
    def sample(self, *args, **kwargs):
        """Not defined for a discriminative model."""
        raise NotImplementedError(
            "cellformer classifiers are discriminative and cannot sample data."
        )


class LinearPathModuleMixin:
    """A frozen linear path beside a learned head: ``logits = linear(x) + head(z)``.

    The linear part (standardised log expression of every gene) is fit by the model
    (:class:`~cellformer.model._linear_path.LinearPathMixin`) and frozen; the head starts at
    zero, so training begins at the linear model and the encoder learns what it misses. An
    auxiliary classifier on ``z`` trains the encoder from the first step (the zero head would
    give it no gradient until it moves). Modules build both with :meth:`_init_head`.
    """

    def _init_linear_path(self, d_model: int, n_input: int, n_labels: int) -> None:
        self.aux_head = nn.Linear(d_model, n_labels)
        self.linear = nn.Linear(n_input, n_labels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("linear_mean", torch.zeros(n_input))
        self.register_buffer("linear_scale", torch.ones(n_input))
        with torch.no_grad():  # start exactly at the linear model
            last = self.head[-1]
            bayesian = isinstance(last, BayesianLinear)
            (last.weight_mu if bayesian else last.weight).zero_()
            (last.bias_mu if bayesian else last.bias).zero_()

    def _init_head(
        self,
        d_model: int,
        n_input: int,
        n_labels: int,
        head: str,
        dropout: float,
        prior_sigma: float,
        init_sigma: float,
        linear_path: bool,
    ) -> None:
        """Build ``self.head`` (dropout + linear or Bayesian layer) and the linear path."""
        classifier = (
            BayesianLinear(d_model, n_labels, prior_sigma=prior_sigma, init_sigma=init_sigma)
            if head == "bayesian"
            else nn.Linear(d_model, n_labels)
        )
        self.head = nn.Sequential(Dropout(dropout), classifier)
        self.linear = self.aux_head = None
        if linear_path:
            self._init_linear_path(d_model, n_input, n_labels)

    def linear_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the linear path (standardised log expression of all genes).

        Unmeasured genes (NaN) are imputed with the training mean (standardised 0).
        """
        return self.linear(torch.nan_to_num((x - self.linear_mean) / self.linear_scale, nan=0.0))

    def _add_paths(self, out: dict, x: torch.Tensor) -> dict:
        """Add the auxiliary logits and the linear path to an inference output."""
        if self.aux_head is not None:
            out["aux_logits"] = self.aux_head(out["z"])
        if self.linear is not None:
            out["logits"] = out["logits"] + self.linear_logits(x.to(out["logits"].device))
        return out


class NewHeadMixin:
    """A new head on a pretrained encoder: the head learns at :attr:`head_lr`, the rest at ``lr``.

    Modules build the head with :meth:`LinearPathModuleMixin._init_head`.
    """

    #: Learning rate of the new classifier head (the pretrained layers get the plan's ``lr``).
    head_lr: float = 1e-3

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits of the encoder path (the new head)."""
        return self.head(z)

    def parameter_groups(self, lr: float) -> list[dict]:
        """Group the new head (and auxiliary head) at ``head_lr``, the pretrained part at ``lr``."""
        new = [*self.head.parameters(), *(self.aux_head.parameters() if self.aux_head else [])]
        new_ids = {id(p) for p in new}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in new_ids]
        groups = [{"params": [p for p in new if p.requires_grad], "lr": max(lr, self.head_lr)}]
        return groups + ([{"params": rest, "lr": lr}] if rest else [])
