"""Which options a training run takes: a clear error for a misspelt or misplaced one."""

from __future__ import annotations

import difflib
import functools
import inspect

from cellformer._errors import ParameterError
from cellformer._utils import check_non_negative

__all__ = ["check_training_options", "parameter_names"]


def parameter_names(fn) -> set[str]:
    """Names of ``fn``'s named parameters (no ``self``, ``*args`` or ``**kwargs``)."""
    return {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


@functools.cache
def trainer_options() -> frozenset[str]:
    """Keywords Lightning's ``Trainer`` takes, with scvi-tools' additions and ``ckpt_path``."""
    import lightning.pytorch as pl
    from scvi.train import Trainer

    return frozenset(
        parameter_names(pl.Trainer.__init__) | parameter_names(Trainer.__init__) | {"ckpt_path"}
    )


def check_training_options(
    plan_cls, plan_kwargs: dict | None, trainer_kwargs: dict, own=()
) -> None:
    """Refuse options neither the training plan nor Lightning's ``Trainer`` takes.

    ``plan_kwargs`` go to ``plan_cls`` (learning rate, weight decay ...), the other keywords of
    ``train`` to the ``Trainer``; a plan option given as a ``train`` keyword (``lr=``) is named
    with where it belongs. Also refuses a learning rate that is not positive and a negative
    weight decay (torch's optimisers would fail deep inside the first step). ``own``: the
    names of ``train``'s own parameters, offered for a misspelt keyword.
    """
    plan_options = parameter_names(plan_cls.__init__) - {"module"}
    plan_kwargs = dict(plan_kwargs or {})
    unknown = sorted(set(plan_kwargs) - plan_options)
    if unknown:
        raise ParameterError(
            f"plan_kwargs has unknown option(s) {unknown}; {plan_cls.__name__} takes "
            f"{sorted(plan_options)}."
        )
    misplaced = sorted(set(trainer_kwargs) & plan_options - trainer_options())
    if misplaced:
        example = ", ".join(f"{k!r}: {trainer_kwargs[k]!r}" for k in misplaced)
        what = f"{misplaced[0]} is an option" if len(misplaced) == 1 else f"{misplaced} are options"
        raise ParameterError(
            f"{what} of the training plan, not of train(): pass plan_kwargs={{{example}}}."
        )
    unknown = sorted(set(trainer_kwargs) - trainer_options())
    if unknown:
        known = [*trainer_options(), *own]
        close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        hints = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in close.items() if m)
        raise ParameterError(
            f"train() got unknown option(s) {unknown}{f' ({hints})' if hints else ''}. Its "
            "own parameters are listed in its docstring; other keywords go to Lightning's "
            f"Trainer, and training-plan options ({', '.join(sorted(plan_options))}) in "
            "plan_kwargs."
        )
    if "lr" in plan_kwargs and not (
        isinstance(plan_kwargs["lr"], int | float)
        and not isinstance(plan_kwargs["lr"], bool)
        and plan_kwargs["lr"] > 0
    ):
        raise ParameterError(f"lr must be a positive number, got {plan_kwargs['lr']!r}.")
    check_non_negative(weight_decay=plan_kwargs.get("weight_decay"))
