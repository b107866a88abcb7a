"""What a prediction run may leave out to keep within a time budget, and in which order.

The optional pieces of work are named ``tta`` (every transform but the identity), ``cell_view``
(the one-cell-at-a-time views of the image models: ``masked`` or ``centred``; without them an image
model scores cells by its CAM, or not at all when it has no CAM head) and ``model:N`` (the N-th
model of ``--models``, counted from 1; the first model is never dropped). A :class:`Plan` is the
pieces dropped so far, in the order they were dropped; nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TTA, CELL_VIEW = "tta", "cell_view"
DEFAULT_ORDER = "tta,cell_view,models"


def model_piece(k: int) -> str:
    """The piece name of model ``k`` (0-based): ``model_piece(1)`` -> ``'model:2'``."""
    return f"model:{k + 1}"


@dataclass(frozen=True)
class Plan:
    """The pieces of work dropped, in the order they were dropped; ``Plan()`` does everything.

    >>> plan = Plan().drop("tta").drop("model:3")
    >>> plan.tta, plan.cell_view, plan.uses(1), plan.uses(2), plan.label()
    (False, True, True, False, 'without tta, model:3')
    """

    dropped: tuple[str, ...] = ()

    @property
    def tta(self) -> bool:
        return TTA not in self.dropped

    @property
    def cell_view(self) -> bool:
        return CELL_VIEW not in self.dropped

    def uses(self, k: int) -> bool:
        """Whether model ``k`` (0-based) is scored."""
        return model_piece(k) not in self.dropped

    def drop(self, piece: str) -> Plan:
        return self if piece in self.dropped else Plan((*self.dropped, piece))

    def label(self) -> str:
        return "without " + ", ".join(self.dropped) if self.dropped else "everything"


def parse_drop_order(text: str, n_models: int) -> list[str]:
    """The pieces of ``--budget-drop`` in order: comma-separated ``tta``, ``cell_view``, ``model:N``
    (2 <= N <= number of models) and ``models`` (every model not named yet, the last given first).
    A piece named twice keeps its first place; a piece left out is never dropped.

    >>> parse_drop_order("tta,cell_view,models", 3)
    ['tta', 'cell_view', 'model:3', 'model:2']
    >>> parse_drop_order("model:2,tta,models", 3)
    ['model:2', 'tta', 'model:3']
    """
    order: list[str] = []
    for item in (s.strip() for s in text.split(",")):
        if item in (TTA, CELL_VIEW):
            pieces = [item]
        elif item == "models":
            pieces = [model_piece(k) for k in range(n_models - 1, 0, -1)]
        elif item.startswith("model:") and item[6:].isdigit() and 2 <= int(item[6:]) <= n_models:
            pieces = [item]
        elif item.startswith("model:") and item[6:] == "1":
            raise ValueError("model:1: the first model is the minimum plan and is never dropped")
        else:
            models = {1: "", 2: "model:2, "}.get(n_models, f"model:2..model:{n_models}, ")
            raise ValueError(f"{item!r} is not a piece of work: give a comma-separated order of tta, cell_view, "
                             f"{models}models (default {DEFAULT_ORDER})")
        order += [p for p in pieces if p not in order]
    return order


def applicable(order: Sequence[str], tta: str, cell_view: str, kinds: Sequence[str]) -> list[str]:
    """The pieces of ``order`` this run has: TTA only if ``tta`` is not ``none``, cell views only
    for ``masked``/``centred`` with an image model among ``kinds``.

    >>> applicable(["tta", "cell_view", "model:2"], "none", "masked", ["image", "cells"])
    ['cell_view', 'model:2']
    """
    out = []
    for piece in order:
        if piece == TTA and tta == "none":
            continue
        if piece == CELL_VIEW and (cell_view not in ("masked", "centred") or "image" not in kinds):
            continue
        out.append(piece)
    return out
