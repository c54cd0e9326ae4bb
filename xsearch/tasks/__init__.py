"""Task kinds: what differs between a text-classification, a question-answering and a causal-LM
fine-tuning, behind one small interface, selected by the search space's ``task_type``.

A task kind says how to read the user's data (which columns, how to split it), how to build the
model of a config (and its tokenizer), how to turn the data into training examples, how to
train and evaluate (a ``transformers.Trainer`` with the kind's collator and metrics), which
metric is primary and in which direction, and what ``XLogCallback`` should be told so the record
describes the run. Everything else (the search, budgets, executors, the store) is the same for
every kind.

The search maximises a *signed quality*: the primary metric when greater is better, its negation
otherwise (``TaskKind.signed``); reports show the metric as logged (``TaskKind.unsigned``).

Kinds: ``text-classification`` (:mod:`.text_classification`), ``question-answering``
(:mod:`.question_answering`, generative: a causal LM writes the answer; SQuAD EM/F1) and
``causal-lm`` (:mod:`.causal_lm`, instruction or plain LM fine-tuning; eval loss, perplexity).
"""
from __future__ import annotations

import importlib
import math
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import XSearchError

if TYPE_CHECKING:
    from ..data import TaskData

__all__ = ["TaskKind", "UnknownTaskKind", "get_task_kind", "task_kind_names", "DEFAULT_TASK_TYPE"]

DEFAULT_TASK_TYPE = "text-classification"

#: name -> "module:Class" (imported on first use: a search for one kind loads only that kind).
_REGISTRY: dict[str, str] = {
    "text-classification": "text_classification:TextClassification",
    "question-answering": "question_answering:QuestionAnswering",
    "causal-lm": "causal_lm:CausalLM",
}
#: Other spellings users and other systems write.
_ALIASES = {"text_classification": "text-classification", "classification": "text-classification",
            "question_answering": "question-answering", "qa": "question-answering",
            "causal_lm": "causal-lm", "clm": "causal-lm", "language-modeling": "causal-lm",
            "text-generation": "causal-lm"}
_INSTANCES: dict[str, "TaskKind"] = {}


class UnknownTaskKind(XSearchError, ValueError):
    """A task type no kind is registered for."""


class TaskKind:
    """The interface of a task kind (subclasses set the attributes and implement the methods).

    Attributes:
        name: the ``task_type`` it serves (also recorded as the record's ``task_type``).
        objective: the model objective (``sequence-classification``, ``causal-lm``).
        primary_metric: the metric the search optimises, as the Trainer logs it (``eval_f1``).
        greater_is_better: its direction.
        metric_label: how reports and the live view name the primary metric.
        report_metrics: other logged metrics worth a leaderboard column.
        default_space: the shipped space file (package resource) for this kind.
    """

    name: str = ""
    objective: str = ""
    primary_metric: str = ""
    greater_is_better: bool = True
    metric_label: str = ""
    report_metrics: tuple[str, ...] = ()
    default_space: str = ""

    # ---- data ------------------------------------------------------------------------------
    def load(self, path: Any, columns: Mapping[str, str] | None = None, *, seed: int = 0,
             validation_fraction: float = 0.2, max_train: int | None = None,
             max_eval: int | None = None) -> "TaskData":
        """The train/validation split of the user's data, with the kind's canonical column names.
        ``columns`` maps a role (``text``, ``label``, ``context``, ``question``, ``answer``,
        ``prompt``, ``response``) to the user's column name. Missing columns raise ``DataError``."""
        raise NotImplementedError

    # ---- model and training -----------------------------------------------------------------------
    def build_model(self, cfg: Mapping[str, Any], spec: Mapping[str, Any], task: "TaskData") -> tuple[Any, Any]:
        """(model, tokenizer) for a config (``tiny:`` names are built from a config)."""
        raise NotImplementedError

    def apply_method(self, model: Any, cfg: Mapping[str, Any], spec: Mapping[str, Any],
                     method_spec: Mapping[str, Any]) -> Any:
        """The config's fine-tuning method (full, lora, partial or another peft type) applied."""
        raise NotImplementedError

    def datasets(self, task: "TaskData", tokenizer: Any, cfg: Mapping[str, Any]) -> tuple[Any, Any]:
        """Tokenized train and eval ``datasets.Dataset`` (the raw columns kept for XLogCallback)."""
        raise NotImplementedError

    def training_arguments(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """``TrainingArguments`` keywords this kind adds to (or changes in) the shared ones."""
        return {}

    def trainer(self, *, model: Any, args: Any, train_dataset: Any, eval_dataset: Any, tokenizer: Any,
                callbacks: list[Any], task: "TaskData", cfg: Mapping[str, Any],
                options: Mapping[str, Any] | None = None) -> Any:
        """The ``transformers.Trainer`` (collator, metrics, evaluation) that trains this kind."""
        raise NotImplementedError

    # ---- what the record says ---------------------------------------------------------------------
    def callback_kwargs(self, task: "TaskData") -> dict[str, Any]:
        """What ``XLogCallback`` is told: task type, primary metric and direction, data columns."""
        return {"task_type": self.name, "primary_metric": self.primary_metric,
                "greater_is_better": self.greater_is_better}

    def feature_columns(self, task: "TaskData") -> dict[str, str | None]:
        """``text_column``/``label_column`` for the task meta-features of the new task
        (xlog.taskfeatures), as the worker tells XLogCallback: the search compares the new task with
        past ones on the features their records hold. Generative data is recognised by its columns."""
        return {"text_column": None, "label_column": None}

    # ---- direction -------------------------------------------------------------------------------
    def signed(self, value: float | None) -> float | None:
        """The quality the search maximises: the metric, negated when lower is better."""
        if value is None or not math.isfinite(float(value)):
            return None
        return float(value) if self.greater_is_better else -float(value)

    def unsigned(self, quality: float | None) -> float | None:
        """The metric as logged, from a signed quality."""
        if quality is None:
            return None
        return float(quality) if self.greater_is_better else -float(quality)

    def format_metric(self, quality: float | None) -> str:
        """``F1 0.8123`` / ``eval loss 1.2345`` for the live view and messages."""
        v = self.unsigned(quality)
        return f"{self.metric_label} {v:.4f}" if v is not None else "-"

    def __repr__(self) -> str:
        return f"<task kind {self.name}: {self.primary_metric} ({'higher' if self.greater_is_better else 'lower'} is better)>"


def canonical_name(task_type: str | None) -> str:
    """The registered name of a task type (aliases resolved; None -> text-classification)."""
    if task_type is None or str(task_type).strip() == "":
        return DEFAULT_TASK_TYPE
    t = str(task_type).strip().lower()
    t = _ALIASES.get(t, t)
    if t not in _REGISTRY:
        raise UnknownTaskKind(f"unknown task type {task_type!r}; xsearch knows {', '.join(task_kind_names())}")
    return t


def get_task_kind(task_type: str | None = None) -> TaskKind:
    """The task kind for a space's ``task_type`` (``None``: text classification)."""
    name = canonical_name(task_type)
    if name not in _INSTANCES:
        module, cls = _REGISTRY[name].split(":")
        _INSTANCES[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return _INSTANCES[name]


def task_kind_names() -> list[str]:
    return list(_REGISTRY)


def objective_of(task_type: str | None) -> tuple[str, bool] | None:
    """(primary metric, greater is better) of a known task type, else None (no import of torch)."""
    try:
        name = canonical_name(task_type)
    except UnknownTaskKind:
        return None
    return _OBJECTIVES[name]


# Kept here (not read from the kind classes) so that the evaluator can read a record's objective
# without importing the kinds' modules; tests check that the two agree.
_OBJECTIVES: dict[str, tuple[str, bool]] = {
    "text-classification": ("eval_f1", True),
    "question-answering": ("eval_f1", True),
    "causal-lm": ("eval_loss", False),
}
