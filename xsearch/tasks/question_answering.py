"""Question answering, generative: a causal LM is fine-tuned to write the answer after
"Context: ... Question: ... Answer:" (the loss counts the answer tokens only), and evaluated by
greedy generation on (up to ``max_generate``) validation questions with SQuAD exact match and
token F1 (0-1, :mod:`.metrics`); primary ``eval_f1`` (greater is better).

Data: columns ``context``, ``question``, ``answer`` (``context`` is optional: closed-book QA).
The answer column may hold a string, a list of gold answers, or SQuAD's ``{"text": [...]}``: the
model trains on the first gold answer and is scored against the best-matching one. Without a
validation split, whole contexts are held out (no context is seen in both splits).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from . import TaskKind
from .metrics import squad_scores

if TYPE_CHECKING:
    from ..data import TaskData


def _gen() -> Any:
    """The shared generative code (imports torch: only in the worker, never in the search's driver)."""
    from . import generative
    return generative

__all__ = ["QuestionAnswering", "prompt_ids", "gold_answers"]

#: Column names recognised for each role when the user names none (case-insensitive).
COLUMN_NAMES = {"context": ("context", "passage", "document"),
                "question": ("question", "query"),
                "answer": ("answer", "answers", "answer_text", "answer_texts", "target")}
MAX_ANSWER_TOKENS = 48  # cap on generated tokens (SQuAD answers are a few words)
DEFAULT_MAX_GENERATE = 100  # validation questions answered by generation per evaluation


def _answer_list(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        value = value.get("text", [])
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if v is not None and str(v).strip()]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(value)]


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """``answer`` (first gold answer, a string) and ``answers`` (every gold answer, a list)."""
    df = df.copy()
    answers = [_answer_list(v) for v in df["answer"]]
    df["answers"] = answers
    df["answer"] = [a[0] if a else None for a in answers]
    return df


def gold_answers(df: pd.DataFrame) -> list[list[str]]:
    if "answers" in df.columns:
        return [_answer_list(v) or [str(a)] for v, a in zip(df["answers"], df["answer"])]
    return [[str(a)] for a in df["answer"]]


def prompt_ids(tok: Any, question: str, context: str | None, max_len: int, answer_room: int,
               answer: str | None = None) -> list[int]:
    """Token ids of the prompt, within ``max_len - answer_room`` tokens: the context is cut, not the
    question. In training (``answer`` given) the kept window of a long context is the one around
    the answer's first occurrence; at evaluation, the beginning (the answer is unknown)."""
    tail = list(tok(f"\nQuestion: {question}\nAnswer:", add_special_tokens=False)["input_ids"])
    budget = max(max_len - answer_room, 8)
    tail = tail[-(budget // 2):] if len(tail) > budget // 2 and context else tail[-budget:]
    if not context:
        return tail
    head = list(tok("Context:", add_special_tokens=False)["input_ids"])
    enc = tok(" " + context, add_special_tokens=False, return_offsets_mapping=True)
    ctx = list(enc["input_ids"])
    room = max(budget - len(tail) - len(head), 0)
    if len(ctx) > room:
        start = 0
        pos = context.find(answer) if answer else -1
        if pos >= 0:
            at = next((i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > pos + 1), 0)
            start = min(max(at - room // 2, 0), len(ctx) - room)
        ctx = ctx[start:start + room]
    return head + ctx + tail


class QuestionAnswering(TaskKind):
    name = "question-answering"
    objective = "causal-lm"
    primary_metric = "eval_f1"
    greater_is_better = True
    metric_label = "F1"
    report_metrics = ("eval_exact_match", "eval_loss")
    default_space = "spaces/question_answering.yaml"
    peft_task_type = "CAUSAL_LM"

    def load(self, path: Any, columns: Mapping[str, str] | None = None, *, seed: int = 0,
             validation_fraction: float = 0.2, max_train: int | None = None,
             max_eval: int | None = None) -> "TaskData":
        from ..data import DataError, find_column, load_columns_task, read_role_splits
        columns = dict(columns or {})
        splits, p, cols = read_role_splits(
            path, columns, COLUMN_NAMES, kind_reads="question answering reads the columns context, question and answer",
            search_needs="a question-answering search needs --data (columns context, question, answer)")
        roles: dict[str, str | None] = {}
        for role, names in COLUMN_NAMES.items():
            found = find_column(cols, role, columns.get(role), names)
            if found is None and (role != "context" or columns.get("context")):
                given = f" (--column {role}={columns[role]} is not one of them)" if columns.get(role) else ""
                raise DataError(f"{p.name}: no {role} column; columns are {cols}{given}; "
                                f"name it with --column {role}=NAME")
            roles[role] = found
        for name, df in splits.items():
            missing = [c for c in roles.values() if c is not None and c not in df.columns]
            if missing:
                raise DataError(f"{p.name} ({name}): no column {missing[0]!r}; columns are {list(df.columns)}")
        return load_columns_task(path, self.name, roles, seed=seed, validation_fraction=validation_fraction,
                                 max_train=max_train, max_eval=max_eval,
                                 group="context" if roles.get("context") else None, prepare=_prepare)

    def build_model(self, cfg: Mapping[str, Any], spec: Mapping[str, Any], task: "TaskData") -> tuple[Any, Any]:
        texts = [" ".join(str(r.get(c) or "") for c in ("context", "question", "answer"))
                 for r in task.train.to_dict("records")]
        return _gen().build_causal_lm(cfg, spec, texts)

    def apply_method(self, model: Any, cfg: Mapping[str, Any], spec: Mapping[str, Any],
                     method_spec: Mapping[str, Any]) -> Any:
        return _gen().apply_causal_method(model, cfg, spec, method_spec)

    def _answer_room(self, tok: Any, task: "TaskData") -> int:
        """Generated tokens per question: the 95th percentile of the training answers' lengths in
        tokens (+ the end token and 2 of slack), within [4, MAX_ANSWER_TOKENS]."""
        sample = task.train["answer"].astype(str).head(500).tolist()
        lengths = [len(tok(" " + a, add_special_tokens=False)["input_ids"]) for a in sample] or [8]
        return int(min(max(math.ceil(float(np.percentile(lengths, 95))) + 3, 4), MAX_ANSWER_TOKENS))

    def datasets(self, task: "TaskData", tokenizer: Any, cfg: Mapping[str, Any]) -> tuple[Any, Any]:
        import datasets
        max_len = int(cfg.get("train_max_seq_length") or 256)
        room = self._answer_room(tokenizer, task)

        def encode(df: pd.DataFrame, train: bool) -> Any:
            rows = []
            for r in df.to_dict("records"):
                p = prompt_ids(tokenizer, r["question"], r.get("context"), max_len, room,
                               answer=r["answer"] if train else None)
                rows.append({**_gen().encode_pair(tokenizer, p, " " + r["answer"], max_len),
                             **{c: r[c] for c in ("context", "question", "answer") if c in r}})
            return datasets.Dataset.from_list(rows)
        return encode(task.train, True), encode(task.eval, False)

    def training_arguments(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return dict(_gen().CAUSAL_LM_ARGUMENTS)

    def trainer(self, *, model: Any, args: Any, train_dataset: Any, eval_dataset: Any, tokenizer: Any,
                callbacks: list[Any], task: "TaskData", cfg: Mapping[str, Any],
                options: Mapping[str, Any] | None = None) -> Any:
        options = dict(options or {})
        n = int(options.get("max_generate", DEFAULT_MAX_GENERATE))
        max_len = int(cfg.get("train_max_seq_length") or 256)
        ev = task.eval.head(n) if n > 0 else task.eval.iloc[:0]
        room = self._answer_room(tokenizer, task)
        # The prompts the model answers: those of the eval examples (same window rule), built once.
        prompts = [prompt_ids(tokenizer, r["question"], r.get("context"), max_len, room)
                   for r in ev.to_dict("records")]
        golds = gold_answers(ev)

        def answer_metrics(model: Any) -> dict[str, float]:
            if not prompts:
                return {}
            preds = _gen().generate(model, tokenizer, prompts, max_new_tokens=room)
            return squad_scores(preds, golds)
        return _gen().GenerativeTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                 processing_class=tokenizer, data_collator=_gen().collator(tokenizer),
                                 callbacks=callbacks, eval_extra=answer_metrics)
