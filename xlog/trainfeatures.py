"""Training hyperparameters from ``TrainingArguments`` and the Trainer state."""
from __future__ import annotations

from typing import Any


def _enum_value(v: Any) -> Any:
    return getattr(v, "value", v)


def compute_train_features(args: Any, state: Any = None, model_dtype: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args is None:
        return out
    world = int(getattr(args, "world_size", 1) or 1)
    bs = int(args.per_device_train_batch_size)
    gas = int(args.gradient_accumulation_steps)
    out["train_learning_rate"] = float(args.learning_rate)
    out["train_batch_size"] = bs
    out["train_grad_accum_steps"] = gas
    out["train_world_size"] = world
    out["train_effective_batch_size"] = bs * gas * world
    out["train_epochs"] = float(args.num_train_epochs)
    max_steps = getattr(state, "max_steps", None) or (args.max_steps if args.max_steps and args.max_steps > 0 else None)
    out["train_max_steps"] = int(max_steps) if max_steps else None
    ws = getattr(args, "warmup_steps", 0) or 0
    ratio = getattr(args, "warmup_ratio", None)
    if isinstance(ws, float) and 0 < ws < 1:  # transformers 5 takes a ratio in warmup_steps
        ratio, ws = ws, None
    out["train_warmup_ratio"] = float(ratio) if ratio else None
    if hasattr(args, "get_warmup_steps") and max_steps:
        try:
            ws = args.get_warmup_steps(int(max_steps))
        except Exception:
            pass
    out["train_warmup_steps"] = int(ws) if ws is not None else None
    out["train_weight_decay"] = float(args.weight_decay)
    out["train_optimizer"] = str(_enum_value(args.optim))
    out["train_lr_scheduler"] = str(_enum_value(args.lr_scheduler_type))
    if getattr(args, "bf16", False) or model_dtype == "bfloat16":
        out["train_precision"] = "bf16"
    elif getattr(args, "fp16", False) or model_dtype == "float16":
        out["train_precision"] = "fp16"
    elif getattr(args, "tf32", False):
        out["train_precision"] = "tf32"
    else:
        out["train_precision"] = "fp32"
    out["train_max_grad_norm"] = float(args.max_grad_norm) if args.max_grad_norm is not None else None
    out["train_gradient_checkpointing"] = bool(getattr(args, "gradient_checkpointing", False))
    out["train_seed"] = int(args.seed)
    return out
