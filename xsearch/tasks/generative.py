"""What the generative kinds (question answering, causal LM) share: a causal LM for a config,
prompt + target examples whose loss counts only the target tokens, a padding collator, greedy
generation, and a Trainer whose evaluation adds perplexity and, for QA, answer metrics."""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, GenerationConfig, Trainer
from transformers.trainer_utils import EvalLoopOutput

from ..space import resolve_model_path
from .methods import apply_method
from .tiny import TINY_PREFIX, tiny_causal_lm

__all__ = ["IGNORE", "GenerativeTrainer", "build_causal_lm", "apply_causal_method", "encode_pair", "collator",
           "generate", "CAUSAL_LM_ARGUMENTS"]

IGNORE = -100  # label of a token the loss does not count (the prompt, padding)

#: TrainingArguments every generative kind sets: the evaluation keeps only the loss (gathering
#: logits would hold eval rows x length x vocabulary floats), and the raw text columns stay in the
#: datasets for XLogCallback (the Trainer drops them before collating).
CAUSAL_LM_ARGUMENTS: dict[str, Any] = {"prediction_loss_only": True, "per_device_eval_batch_size": 16}


def build_causal_lm(cfg: Mapping[str, Any], spec: Mapping[str, Any], texts: list[str]) -> tuple[Any, Any]:
    """(causal LM, tokenizer): a tiny one built from a config (``tiny:llama-LxH``, ``tiny:gpt2-LxH``,
    tokenizer trained on ``texts``), or a pretrained one from the space's ``models:`` entry (a local
    ``path``, a ``package``, a ``prepare: smollm2`` conversion, else the Hub id)."""
    name = str(cfg["model_name"])
    if name.startswith(TINY_PREFIX):
        model, tok = tiny_causal_lm(name, texts)
    else:
        path = resolve_model_path(name, spec)
        if path != name:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local copy: never reach for the network
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    tok.padding_side = "right"  # training; generation pads on the left itself
    return model, tok


def apply_causal_method(model: Any, cfg: Mapping[str, Any], spec: Mapping[str, Any],
                        method_spec: Mapping[str, Any]) -> Any:
    return apply_method(model, cfg, spec, method_spec, peft_task_type="CAUSAL_LM", train_head=False)


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_pair(tok: Any, prompt_ids: list[int], target: str | None, max_len: int) -> dict[str, list[int]]:
    """input_ids = prompt + target + end-of-sequence; labels = IGNORE over the prompt. Too long:
    the target keeps at least half of ``max_len`` (its end token last), the prompt keeps its end
    (the part next to the target). ``target=None``: the whole prompt is the target (plain LM text)."""
    eos = tok.eos_token_id
    if target is None:
        ids = (prompt_ids + ([eos] if eos is not None else []))[:max_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}
    tgt = _ids(tok, target) + ([eos] if eos is not None else [])
    room_prompt = max(max_len - len(tgt), max_len // 2)
    prompt = prompt_ids[-room_prompt:] if len(prompt_ids) > room_prompt else prompt_ids
    tgt = tgt[: max_len - len(prompt)]
    if eos is not None and tgt and tgt[-1] != eos:
        tgt[-1] = eos  # truncated: it still learns where an answer ends
    ids = prompt + tgt
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prompt) + tgt}


def collator(tok: Any) -> Any:
    """Pads input_ids/attention_mask with the tokenizer and labels with IGNORE."""
    return DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE)


@torch.inference_mode()
def generate(model: Any, tok: Any, prompts: Sequence[list[int]], max_new_tokens: int,
             batch_size: int = 16) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches), decoded, up to the first
    line break (answers are one line)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                           pad_token_id=pad, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            batch = prompts[i:i + batch_size]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, p in enumerate(batch):
                ids[j, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[j, width - len(p):] = 1
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
            for row in seqs[:, width:]:
                text = tok.decode(row.tolist(), skip_special_tokens=True)
                out.append(text.split("\n", 1)[0].strip())
    finally:
        model.train(was_training)
    return out


class GenerativeTrainer(Trainer):
    """A Trainer whose evaluation adds ``<prefix>_perplexity`` (exp of the eval loss, the
    per-token loss over the target tokens) and whatever ``eval_extra(model)`` returns (e.g.
    ``exact_match`` and ``f1`` of generated answers), so they are logged, seen by callbacks
    (XLogCallback records them) and part of ``trainer.evaluate()``'s result."""

    def __init__(self, *args: Any, eval_extra: Callable[[Any], dict[str, float]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.eval_extra = eval_extra

    def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> EvalLoopOutput:
        out = super().evaluation_loop(dataloader, description, prediction_loss_only=True, ignore_keys=ignore_keys,
                                      metric_key_prefix=metric_key_prefix)
        metrics = dict(out.metrics)
        loss = metrics.get(f"{metric_key_prefix}_loss")
        if loss is not None and math.isfinite(loss) and loss < 700:  # exp overflows beyond
            metrics[f"{metric_key_prefix}_perplexity"] = math.exp(loss)
        if self.eval_extra is not None:
            metrics.update({f"{metric_key_prefix}_{k}": float(v) for k, v in self.eval_extra(self.model).items()})
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=out.num_samples)
