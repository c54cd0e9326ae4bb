"""Tiny models built from a config, with a tokenizer trained on the task's own texts: real
fine-tunings in seconds, no download (tests, smoke runs). Names: ``tiny:<arch>-<layers>x<hidden>``,
``bert`` for classification, ``llama`` or ``gpt2`` for causal LMs (e.g. ``tiny:llama-2x32``)."""
from __future__ import annotations

from typing import Any

__all__ = ["TINY_PREFIX", "parse_tiny", "wordpiece_tokenizer", "bpe_tokenizer", "tiny_causal_lm"]

TINY_PREFIX = "tiny:"
ARCHS = ("bert", "llama", "gpt2")


def parse_tiny(name: str, allowed: tuple[str, ...] = ARCHS) -> tuple[str, int, int]:
    """``tiny:llama-2x32`` -> ("llama", layers, hidden size)."""
    spec = name[len(TINY_PREFIX):]
    try:
        arch, dims = spec.split("-", 1)
        layers, hidden = (int(x) for x in dims.lower().split("x"))
    except ValueError:
        raise ValueError(f"tiny model {name!r}: expected tiny:<arch>-<layers>x<hidden>, e.g. tiny:bert-2x32") from None
    if arch not in allowed:
        raise ValueError(f"tiny model {name!r}: this task builds tiny {' or '.join(allowed)} models, not {arch!r}")
    return arch, layers, hidden


def wordpiece_tokenizer(texts: list[str], vocab_size: int = 1000) -> Any:
    """A WordPiece tokenizer trained on the task's own texts (no download), for tiny encoders."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def bpe_tokenizer(texts: list[str], vocab_size: int = 1000) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style: decodes back to the exact text, which the answer
    metrics compare) trained on the task's own texts, with ``<|endoftext|>`` as end and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=eos,
                                   unk_token=eos, model_max_length=2048)


def tiny_causal_lm(name: str, texts: list[str], max_positions: int = 1024) -> tuple[Any, Any]:
    """(model, tokenizer) of a ``tiny:llama-LxH`` / ``tiny:gpt2-LxH`` causal LM (seed 0 weights)."""
    import torch
    arch, layers, hidden = parse_tiny(name, ("llama", "gpt2"))
    tok = bpe_tokenizer(texts)
    heads = max(1, hidden // 16)
    torch.manual_seed(0)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
        return LlamaForCausalLM(cfg), tok
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg), tok
