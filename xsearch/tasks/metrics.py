"""SQuAD answer metrics, computed here (no metric download at run time): exact match and token
F1 after the standard answer normalisation (lower case, punctuation removed, the articles a/an/the
removed, whitespace collapsed), the maximum over the gold answers of a question, averaged over
questions, on a 0-1 scale (the official script reports 0-100)."""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Sequence

__all__ = ["normalize_answer", "exact_match", "token_f1", "squad_scores"]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces: the SQuAD v1.1 rule."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall over the normalised answers' tokens (bag of
    tokens: a repeated token counts as often as it is in both). Two empty answers match (1.0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[str | Iterable[str]]) -> dict[str, float]:
    """``{"exact_match": ..., "f1": ...}`` (0-1) of predictions against their gold answers (one
    string or several per question: the best-matching one counts)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for pred, gold in zip(predictions, golds):
        answers = [gold] if isinstance(gold, str) else [str(g) for g in gold] or [""]
        em += max(exact_match(pred, g) for g in answers)
        f1 += max(token_f1(pred, g) for g in answers)
    n = len(predictions)
    return {"exact_match": em / n, "f1": f1 / n}
