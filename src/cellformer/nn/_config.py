"""One frozen configuration of the transformer network: encoder, pooling and head."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from cellformer._errors import ParameterError
from cellformer._utils import (
    check_dataclass_types,
    check_non_negative,
    check_positive,
    check_probability,
)

from ._attention import ATTENTION

__all__ = [
    "ENCODER_FIELDS",
    "ENCODER_PRESETS",
    "HEADS",
    "POOLING",
    "EncoderConfig",
    "get_encoder_config",
]

#: Pooling of the encoder's tokens into the cell embedding.
POOLING = ("mean", "cls", "genes")
#: Classification heads.
HEADS = ("linear", "bayesian")


@dataclass(frozen=True)
class EncoderConfig:
    """The transformer network: encoder, pooling and head, one place for every default.

    Passed through the model, its :class:`~cellformer.module.TransformerModule`,
    :func:`~cellformer.model.pretrain` and the encoder. Models take it as ``encoder=`` (a
    config, a preset name of :data:`ENCODER_PRESETS`, or a dict of fields, e.g. ``{"preset":
    "small", "n_layers": 2}``), and any field as a keyword shortcut:
    ``CellTransformer(adata, d_model=32)`` is ``CellTransformer(adata,
    encoder=EncoderConfig(d_model=32))``. The fields are described under
    :class:`~cellformer.model.CellTransformer` (its shared parameter documentation).

    Examples
    --------
    >>> from cellformer.nn import EncoderConfig, get_encoder_config
    >>> get_encoder_config("small", n_layers=2)
    EncoderConfig(d_model=32, n_layers=2, n_heads=2, ...)
    """

    d_model: int = 64
    n_layers: int = 1
    n_heads: int = 4
    d_ff: int | None = None
    head_dim: int | None = None
    dropout: float = 0.1
    attention_dropout: float = 0.0
    attention: str = "dense"
    attention_options: Mapping[str, Any] | None = None
    token_norm: bool = False
    token_dropout: float = 0.15
    pooling: str | None = None
    head: str = "linear"
    bayesian_ffn: bool = False
    prior_sigma: float = 1.0
    init_sigma: float = 0.1
    kl_weight: float = 1.0
    layer_sizes: tuple[tuple[int, int], ...] | None = None
    linear_path: bool = True

    def __post_init__(self):
        check_dataclass_types(self, "encoder")  # types (NaN refused), then the ranges
        sizes = ("d_model", "n_layers", "n_heads", "d_ff", "head_dim")
        check_positive(**{name: getattr(self, name) for name in sizes})
        check_probability(
            required=True,
            **{
                name: getattr(self, name)
                for name in ("dropout", "attention_dropout", "token_dropout")
            },
        )
        check_non_negative(
            required=True,
            **{name: getattr(self, name) for name in ("prior_sigma", "init_sigma", "kl_weight")},
        )
        for name in sizes:
            if getattr(self, name) is not None:  # numpy integers saved as plain ones
                object.__setattr__(self, name, int(getattr(self, name)))
        if self.attention not in ATTENTION:
            raise ParameterError(
                f"Unknown attention {self.attention!r}; choose from {sorted(ATTENTION)} "
                "(cellformer.nn.register_attention adds a kernel)."
            )
        if self.pooling is not None and self.pooling not in POOLING:
            raise ParameterError(f"pooling must be one of {POOLING}, got {self.pooling!r}.")
        if self.head not in HEADS:
            raise ParameterError(f"head must be one of {HEADS}, got {self.head!r}.")
        if self.attention_options is not None:
            object.__setattr__(self, "attention_options", dict(self.attention_options))
        if self.layer_sizes is not None:
            sizes = tuple((int(h), int(f)) for h, f in self.layer_sizes)
            object.__setattr__(self, "layer_sizes", sizes)

    @property
    def ff_units(self) -> int:
        """FFN hidden units: ``d_ff``, else ``2 * d_model``."""
        return self.d_ff or 2 * self.d_model

    def replace(self, **changes) -> EncoderConfig:
        """Return a copy with ``changes`` (validated; unknown names are an error)."""
        check_fields(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Return the fields as a plain dict (saved with models and pretrained encoders)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["layer_sizes"] is not None:
            out["layer_sizes"] = [list(size) for size in out["layer_sizes"]]
        return out


#: Fields of the encoder proper (what :func:`~cellformer.model.pretrain` saves and fine-tuning
#: keeps); the others are the pooling and the classification head.
ENCODER_FIELDS = (
    "d_model",
    "n_layers",
    "n_heads",
    "d_ff",
    "dropout",
    "attention_dropout",
    "attention",
    "attention_options",
)

#: Named configurations: the default, a small one for quick runs, and scBERT's published
#: Performer (200-wide tokens, 6 blocks of 10 heads of 64, FFN 800, final token LayerNorm).
ENCODER_PRESETS: dict[str, EncoderConfig] = {
    "default": EncoderConfig(),
    "small": EncoderConfig(d_model=32, n_heads=2),
    "scbert": EncoderConfig(
        d_model=200,
        n_layers=6,
        n_heads=10,
        head_dim=64,
        d_ff=800,
        attention="performer",
        token_norm=True,
        pooling="genes",
    ),
}


def check_fields(values: Mapping) -> None:
    """Refuse names that are not :class:`~cellformer.nn.EncoderConfig` fields, naming the known ones."""
    known = {f.name for f in fields(EncoderConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ParameterError(
            f"Unknown encoder option(s) {unknown}; EncoderConfig has {sorted(known)}."
        )


def get_encoder_config(
    spec: str | Mapping | EncoderConfig | None = None, **overrides
) -> EncoderConfig:
    """Return an :class:`~cellformer.nn.EncoderConfig` from a preset name, a dict of fields or a config.

    ``overrides`` (field values) are applied last. A dict may name its base with ``"preset"``.
    """
    if spec is None:
        config = ENCODER_PRESETS["default"]
    elif isinstance(spec, EncoderConfig):
        config = spec
    elif isinstance(spec, str):
        if spec not in ENCODER_PRESETS:
            raise ParameterError(
                f"Unknown encoder preset {spec!r}; choose from {sorted(ENCODER_PRESETS)}."
            )
        config = ENCODER_PRESETS[spec]
    elif isinstance(spec, Mapping):
        spec = dict(spec)
        base = get_encoder_config(spec.pop("preset", None))
        check_fields(spec)
        config = dataclasses.replace(base, **spec)
    else:
        raise ParameterError(
            "encoder must be an EncoderConfig, a preset name "
            f"({sorted(ENCODER_PRESETS)}) or a dict of its fields, got {type(spec).__name__}."
        )
    return config.replace(**overrides) if overrides else config
