"""Fine-tuning methods, shared by every task kind: full, LoRA, partial freezing (top N layers),
or any other ``peft`` type with keyword arguments from the space's ``methods:`` section."""
from __future__ import annotations

from typing import Any, Mapping

from xlog.modelfeatures import _layer_lists  # the same notion of "layer" the records use

__all__ = ["apply_method"]


def apply_method(model: Any, cfg: Mapping[str, Any], spec: Mapping[str, Any], method_spec: Mapping[str, Any],
                 *, peft_task_type: str = "SEQ_CLS", train_head: bool = True) -> Any:
    """Full fine-tuning, LoRA, partial freezing (top N layers, + the head when ``train_head``), or
    another peft method. ``peft_task_type``: ``SEQ_CLS`` (the classifier trains in full through
    ``modules_to_save``) or ``CAUSAL_LM``. Causal LMs keep their LM head frozen under partial
    freezing (``train_head=False``): it is usually tied to the input embeddings (SmolLM2, GPT-2),
    so training it would train the whole vocabulary's embeddings, not a head."""
    method = str(cfg["ft_method"]).lower()
    if method == "full":
        return model
    if method == "partial":
        n = int(cfg.get("ft_trainable_layers") or 1)
        for p in model.parameters():
            p.requires_grad = False
        layer_lists = _layer_lists(model.base_model if hasattr(model, "base_model") else model)
        if not layer_lists:
            raise ValueError(f"partial fine-tuning: no layer list found in {type(model).__name__}")
        blocks = max(layer_lists, key=len)
        for block in list(blocks)[-n:]:
            for p in block.parameters():
                p.requires_grad = True
        if train_head:
            prefix = getattr(model, "base_model_prefix", "") + "."
            for pname, p in model.named_parameters():
                # The classification head (outside the base model) and the pooler always train.
                if not pname.startswith(prefix) or ".pooler." in pname:
                    p.requires_grad = True
        return model
    import peft
    if method == "lora":
        targets = spec.get("lora_target_modules")
        conf = peft.LoraConfig(task_type=getattr(peft.TaskType, peft_task_type), r=int(cfg["peft_lora_r"]),
                               lora_alpha=float(cfg.get("peft_lora_alpha") or 2 * int(cfg["peft_lora_r"])),
                               lora_dropout=float(cfg.get("peft_lora_dropout") or 0.0),
                               target_modules=list(targets) if targets else None)
    else:  # any other peft type, with keyword arguments from the space's `methods:` section
        conf = peft.get_peft_config({"peft_type": method.upper(), "task_type": peft_task_type, **method_spec})
    return peft.get_peft_model(model, conf)
