"""Text classification: a text column and a label column; an encoder (or any model with a
sequence-classification head) fine-tuned to predict the label; accuracy and macro F1, primary
``eval_f1`` (greater is better). The models are in :mod:`.classifier` (imported when a model is
built: the search's driver reads data and never needs torch)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from . import TaskKind

if TYPE_CHECKING:
    from ..data import TaskData

__all__ = ["TextClassification"]


class TextClassification(TaskKind):
    """Columns ``text`` and ``label`` (``--text-column``/``--label-column``); a stratified
    validation split when none is given."""

    name = "text-classification"
    objective = "sequence-classification"
    primary_metric = "eval_f1"
    greater_is_better = True
    metric_label = "macro F1"
    report_metrics = ("eval_accuracy",)
    default_space = "default_space.yaml"

    def load(self, path: Any, columns: Mapping[str, str] | None = None, *, seed: int = 0,
             validation_fraction: float = 0.2, max_train: int | None = None,
             max_eval: int | None = None) -> "TaskData":
        from ..data import load_task
        columns = dict(columns or {})
        unknown = sorted(set(columns) - {"text", "label"})
        if unknown:
            from ..data import DataError
            raise DataError(f"text classification reads the columns text and label, not {unknown}")
        task = load_task(path, columns.get("text") or "text", columns.get("label") or "label",
                         validation_fraction=validation_fraction, seed=seed, max_train=max_train, max_eval=max_eval)
        task.task_type = self.name
        return task

    def build_model(self, cfg: Mapping[str, Any], spec: Mapping[str, Any], task: "TaskData") -> tuple[Any, Any]:
        from .classifier import build_model
        model, tok = build_model(cfg, spec, len(task.labels), task.train["text"].tolist())
        model.config.id2label = dict(enumerate(task.labels))
        model.config.label2id = {v: i for i, v in enumerate(task.labels)}
        return model, tok

    def apply_method(self, model: Any, cfg: Mapping[str, Any], spec: Mapping[str, Any],
                     method_spec: Mapping[str, Any]) -> Any:
        from .methods import apply_method
        return apply_method(model, cfg, spec, method_spec, peft_task_type="SEQ_CLS", train_head=True)

    def datasets(self, task: "TaskData", tokenizer: Any, cfg: Mapping[str, Any]) -> tuple[Any, Any]:
        import datasets
        max_len = int(cfg.get("train_max_seq_length") or 128)

        def tokenize(batch: dict[str, list]) -> Any:
            return tokenizer(batch["text"], truncation=True, max_length=max_len)
        train_ds = datasets.Dataset.from_pandas(task.train[["text", "label"]]).map(tokenize, batched=True)
        eval_ds = datasets.Dataset.from_pandas(task.eval[["text", "label"]]).map(tokenize, batched=True)
        return train_ds, eval_ds

    def trainer(self, *, model: Any, args: Any, train_dataset: Any, eval_dataset: Any, tokenizer: Any,
                callbacks: list[Any], task: "TaskData", cfg: Mapping[str, Any],
                options: Mapping[str, Any] | None = None) -> Any:
        from transformers import DataCollatorWithPadding, Trainer

        from .classifier import compute_metrics
        return Trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                       processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                       compute_metrics=compute_metrics, callbacks=callbacks)

    def callback_kwargs(self, task: "TaskData") -> dict[str, Any]:
        return {**super().callback_kwargs(task), "text_column": "text", "label_column": "label"}

    def feature_columns(self, task: "TaskData") -> dict[str, str | None]:
        return {"text_column": "text", "label_column": "label"}
