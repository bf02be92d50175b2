"""Training weights that keep every source and every class from drowning the others.

SDNET2018 decks hold 2,021 cracked and 11,586 uncracked tiles, and SDNET2018 as a whole
outnumbers Mendeley; trained unweighted, a model learns mostly the biggest cell. Each
image is weighted inversely to the size of its cell, and the weights are scaled to a mean
of 1, so the loss keeps its scale and the learning rate its meaning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from crackcls.data.splitting import Item

# none: every image counts once; class: each class weighs the same in total;
# source_class: each class of each source weighs the same in total.
Balance = Literal["none", "class", "source_class"]


def cell(item: Item, balance: Balance) -> tuple[str, int]:
    return (item.source if balance == "source_class" else "", item.label)


def balance_weights(items: Sequence[Item], balance: Balance) -> np.ndarray | None:
    """One float32 weight per item (mean 1), or None when ``balance`` is ``none``."""
    if balance == "none" or not items:
        return None
    sizes = Counter(cell(it, balance) for it in items)
    raw = np.asarray([1.0 / sizes[cell(it, balance)] for it in items], np.float64)
    return (raw * len(items) / raw.sum()).astype(np.float32)


def weight_shares(items: Sequence[Item], weights: np.ndarray | None) -> dict[str, float]:
    """Share of the total training weight per cell, e.g. ``decks/positive``: what the loss sees."""
    values = weights if weights is not None else np.ones(len(items), np.float32)
    totals: Counter[str] = Counter()
    for item, weight in zip(items, values):
        source, label = cell(item, "source_class")
        totals[f"{source}/{'positive' if label else 'negative'}"] += float(weight)
    whole = sum(totals.values()) or 1.0
    return {key: round(value / whole, 4) for key, value in sorted(totals.items())}


def hard_negatives(items: Sequence[Item], probabilities: np.ndarray, share: float) -> np.ndarray:
    """Per item: is it one of the ``share`` of its source's uncracked images the model scores highest?

    Per source, so that the source whose negatives look least like cracks (Mendeley's plain
    campus walls) does not hide the joints, holes, edges and shadows of another.
    """
    probabilities = np.asarray(probabilities, np.float64)
    if len(probabilities) != len(items):
        raise ValueError(f"{len(probabilities)} probabilities for {len(items)} items")
    hard = np.zeros(len(items), bool)
    for source in sorted({it.source for it in items}):
        index = np.asarray([i for i, it in enumerate(items) if it.source == source and it.label == 0], int)
        if index.size:
            count = int(round(share * index.size))
            # the highest scores first; ties broken by position, so the choice is reproducible
            hard[index[np.argsort(-probabilities[index], kind="stable")[:count]]] = True
    return hard


def emphasised(weights: np.ndarray | None, hard: np.ndarray, factor: float) -> np.ndarray:
    """``weights`` (or ones) with the ``hard`` items' multiplied by ``factor``, scaled back to a mean of 1."""
    base = np.ones(len(hard), np.float64) if weights is None else np.asarray(weights, np.float64)
    raw = base * np.where(hard, factor, 1.0)
    return (raw * len(raw) / raw.sum()).astype(np.float32) if len(raw) else raw.astype(np.float32)
