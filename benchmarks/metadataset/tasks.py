"""Deterministic task subsamples for the meta-dataset (see tasks.yaml).

Each task becomes a directory ``<cache>/tasks/<name>/`` with ``train.parquet``, ``eval.parquet``
(columns ``text``, ``label`` = class index) and ``labels.json``: the format the xsearch
evaluator's workers read. The subsample depends only on the source file, tasks.yaml and the seed,
so every machine that runs the harness trains on the same texts (``data_sha256`` in the manifest
lets one check that).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
TASKS_FILE = HERE / "tasks.yaml"


@dataclass
class TaskSpec:
    name: str
    file: str
    train: list[str]
    eval: list[str]
    holdout: bool
    max_train: int
    max_eval: int
    seed: int


def load_specs(path: Path = TASKS_FILE) -> list[TaskSpec]:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    d = doc.get("defaults") or {}
    out = []
    for t in doc["tasks"]:
        out.append(TaskSpec(t["name"], t["file"], list(t.get("train") or ["train"]), list(t.get("eval") or []),
                            bool(t.get("holdout", False)), int(t.get("max_train", d.get("max_train", 256))),
                            int(t.get("max_eval", d.get("max_eval", 160))), int(t.get("seed", d.get("seed", 0)))))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate task names")
    return out


def stratified_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows with the class proportions of ``df`` (largest remainders; every class with rows
    gets at least one when n allows), chosen by a seeded permutation, returned in source order."""
    if len(df) <= n:
        return df
    rng = np.random.RandomState(seed)
    counts = df["label"].value_counts().sort_index()
    exact = counts / counts.sum() * n
    alloc = np.floor(exact).astype(int)
    if n >= len(counts):
        alloc[alloc == 0] = 1
    rest = n - int(alloc.sum())
    order = (exact - np.floor(exact)).sort_values(ascending=False, kind="stable").index
    i = 0
    while rest != 0:
        lab = order[i % len(order)]
        if rest > 0 and alloc[lab] < counts[lab]:
            alloc[lab] += 1
            rest -= 1
        elif rest < 0 and alloc[lab] > 1:
            alloc[lab] -= 1
            rest += 1
        i += 1
    keep: list[Any] = []
    for lab, k in alloc.items():
        idx = df.index[df["label"] == lab].to_numpy()
        keep.extend(idx[rng.permutation(len(idx))[:k]])
    return df.loc[sorted(keep)]


def build_task(spec: TaskSpec, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    src = Path(data_dir) / spec.file
    if not src.is_file():
        raise FileNotFoundError(f"task {spec.name}: {src} not found (give --data-dir)")
    df = pd.read_parquet(src)
    df = df.dropna(subset=["text", "label"])
    df["label"] = df["label"].astype(str)
    df["text"] = df["text"].astype(str)
    pool = df[df["split"].isin(spec.train)]
    if spec.holdout:
        ev = stratified_sample(pool, spec.max_eval, spec.seed + 1)
        tr = stratified_sample(pool.drop(index=ev.index), spec.max_train, spec.seed)
    else:
        tr = stratified_sample(pool, spec.max_train, spec.seed)
        ev = stratified_sample(df[df["split"].isin(spec.eval)], spec.max_eval, spec.seed + 1)
    labels = sorted(tr["label"].unique())
    ev = ev[ev["label"].isin(labels)]  # a class never seen in training cannot be predicted
    index = {lab: i for i, lab in enumerate(labels)}
    tr = pd.DataFrame({"text": tr["text"].to_numpy(), "label": tr["label"].map(index).astype("int64").to_numpy()})
    ev = pd.DataFrame({"text": ev["text"].to_numpy(), "label": ev["label"].map(index).astype("int64").to_numpy()})
    if len(tr) == 0 or len(ev) == 0 or len(labels) < 2:
        raise ValueError(f"task {spec.name}: empty split or a single class after subsampling")
    return tr, ev, labels


def _digest(tr: pd.DataFrame, ev: pd.DataFrame, labels: list[str]) -> str:
    h = hashlib.sha256()
    for part in (tr, ev):
        for text, label in zip(part["text"], part["label"]):
            h.update(text.encode("utf-8") + b"\x00" + str(label).encode() + b"\x01")
        h.update(b"\x02")
    h.update(json.dumps(labels).encode())
    return h.hexdigest()


def prepare_tasks(data_dir: Path, cache: Path, specs: list[TaskSpec] | None = None) -> dict[str, dict[str, Any]]:
    """Write every task's subsample under ``cache/tasks`` (rewritten each time: cheap and always in
    step with tasks.yaml); returns the manifest name -> {dir, n_train, n_eval, n_classes, ...}."""
    manifest = {}
    for spec in specs or load_specs():
        tr, ev, labels = build_task(spec, data_dir)
        d = Path(cache) / "tasks" / spec.name
        d.mkdir(parents=True, exist_ok=True)
        tr.to_parquet(d / "train.parquet", index=False)
        ev.to_parquet(d / "eval.parquet", index=False)
        (d / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
        manifest[spec.name] = {"dir": str(d), "source_file": spec.file, "n_train": len(tr), "n_eval": len(ev),
                               "n_classes": len(labels), "train_splits": spec.train,
                               "eval_splits": "holdout" if spec.holdout else spec.eval,
                               "data_sha256": _digest(tr, ev, labels)}
    return manifest
