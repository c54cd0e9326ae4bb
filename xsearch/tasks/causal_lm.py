"""Causal-LM fine-tuning: instruction data (``prompt`` and ``response`` columns: the loss counts
the response tokens only) or plain text (a ``text`` column: every token counts). Metrics: the
evaluation loss (mean per target token) and perplexity (its exponential); primary ``eval_loss``,
lower is better (the search maximises its negation)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from . import TaskKind

if TYPE_CHECKING:
    from ..data import TaskData


def _gen() -> Any:
    """The shared generative code (imports torch: only in the worker, never in the search's driver)."""
    from . import generative
    return generative

__all__ = ["CausalLM", "format_prompt"]

COLUMN_NAMES = {"prompt": ("prompt", "instruction", "input", "question"),
                "response": ("response", "output", "completion", "answer", "target"),
                "text": ("text", "content", "document")}


def format_prompt(prompt: str) -> str:
    """The text before the response: the prompt, then a line break."""
    return f"{prompt}\n"


class CausalLM(TaskKind):
    name = "causal-lm"
    objective = "causal-lm"
    primary_metric = "eval_loss"
    greater_is_better = False
    metric_label = "eval loss"
    report_metrics = ("eval_perplexity",)
    default_space = "spaces/causal_lm.yaml"
    peft_task_type = "CAUSAL_LM"

    def load(self, path: Any, columns: Mapping[str, str] | None = None, *, seed: int = 0,
             validation_fraction: float = 0.2, max_train: int | None = None,
             max_eval: int | None = None) -> "TaskData":
        from ..data import DataError, find_column, load_columns_task, read_role_splits
        columns = dict(columns or {})
        splits, p, cols = read_role_splits(
            path, columns, COLUMN_NAMES, kind_reads="causal-LM data has prompt and response columns, or a text column",
            search_needs="a causal-lm search needs --data (columns prompt and response, or text)")
        for role, given in columns.items():
            if given not in cols:
                raise DataError(f"{p.name}: no column {given!r} for {role}; columns are {cols}")
        want_pair = bool({"prompt", "response"} & set(columns)) or "text" not in columns
        prompt = find_column(cols, "prompt", columns.get("prompt"), COLUMN_NAMES["prompt"])
        response = find_column(cols, "response", columns.get("response"), COLUMN_NAMES["response"])
        if want_pair and prompt is not None and response is not None:
            roles: dict[str, str | None] = {"prompt": prompt, "response": response}
        else:
            text = find_column(cols, "text", columns.get("text"), COLUMN_NAMES["text"])
            if text is None:
                raise DataError(f"{p.name}: causal-LM data needs prompt and response columns, or a text column; "
                                f"columns are {cols} (name them with --column prompt=NAME --column response=NAME "
                                "or --column text=NAME)")
            roles = {"text": text}
        return load_columns_task(path, self.name, roles, seed=seed, validation_fraction=validation_fraction,
                                 max_train=max_train, max_eval=max_eval)

    def build_model(self, cfg: Mapping[str, Any], spec: Mapping[str, Any], task: "TaskData") -> tuple[Any, Any]:
        cols = [c for c in ("prompt", "response", "text") if c in task.train.columns]
        texts = [" ".join(str(r[c]) for c in cols) for r in task.train.to_dict("records")]
        return _gen().build_causal_lm(cfg, spec, texts)

    def apply_method(self, model: Any, cfg: Mapping[str, Any], spec: Mapping[str, Any],
                     method_spec: Mapping[str, Any]) -> Any:
        return _gen().apply_causal_method(model, cfg, spec, method_spec)

    def datasets(self, task: "TaskData", tokenizer: Any, cfg: Mapping[str, Any]) -> tuple[Any, Any]:
        import datasets
        max_len = int(cfg.get("train_max_seq_length") or 256)
        pair = "prompt" in task.train.columns

        def encode(df: Any) -> Any:
            rows = []
            for r in df.to_dict("records"):
                if pair:
                    p = list(tokenizer(format_prompt(r["prompt"]), add_special_tokens=False)["input_ids"])
                    enc = _gen().encode_pair(tokenizer, p, r["response"], max_len)
                    rows.append({**enc, "prompt": r["prompt"], "response": r["response"]})
                else:
                    ids = list(tokenizer(r["text"], add_special_tokens=False)["input_ids"])
                    rows.append({**_gen().encode_pair(tokenizer, ids, None, max_len), "text": r["text"]})
            return datasets.Dataset.from_list(rows)
        return encode(task.train), encode(task.eval)

    def training_arguments(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return dict(_gen().CAUSAL_LM_ARGUMENTS)

    def trainer(self, *, model: Any, args: Any, train_dataset: Any, eval_dataset: Any, tokenizer: Any,
                callbacks: list[Any], task: "TaskData", cfg: Mapping[str, Any],
                options: Mapping[str, Any] | None = None) -> Any:
        return _gen().GenerativeTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                 processing_class=tokenizer, data_collator=_gen().collator(tokenizer), callbacks=callbacks)
