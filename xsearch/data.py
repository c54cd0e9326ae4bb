"""Loading the user's task data for a search: a file (CSV, JSON, JSONL, Parquet) or a local
``datasets`` directory, with a stratified validation split when none is given."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

#: The data `xsearch run` uses without --data (shipped with the repository, see examples/data/SOURCES.md).
DEFAULT_DATA = "examples/data/sms_spam_600.parquet"
_TRAIN_NAMES = ("train",)
_EVAL_NAMES = ("validation", "valid", "dev", "val", "eval", "test")


class DataError(ValueError):
    """The data cannot be used for a search; the message says why."""


@dataclass
class TaskData:
    """Train/validation frames with columns ``text`` and ``label`` (a class index)."""

    train: pd.DataFrame
    eval: pd.DataFrame
    labels: list[str]
    name: str
    split_note: str

    def save(self, directory: Path) -> None:
        """Write train/eval Parquet files and the label list for the evaluator's workers."""
        directory.mkdir(parents=True, exist_ok=True)
        self.train.to_parquet(directory / "train.parquet", index=False)
        self.eval.to_parquet(directory / "eval.parquet", index=False)
        (directory / "labels.json").write_text(json.dumps(self.labels), encoding="utf-8")


def default_data_path() -> Path | None:
    """The shipped default dataset, looked up from the working directory and the source tree."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        p = base / DEFAULT_DATA
        if p.is_file():
            return p
    return None


def _read_file(path: Path) -> pd.DataFrame:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"could not read {path.name}: {exc.strerror or exc}") from None
    if size == 0:
        raise DataError(f"{path.name} is empty (0 bytes): no header and no rows")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix in (".gz", ".bz2") else path.suffix.lower()
    try:
        if suffix.startswith(".parquet") or suffix == ".pq":
            return pd.read_parquet(path)
        if suffix.startswith(".csv"):
            return pd.read_csv(path)
        if suffix.startswith(".tsv"):
            return pd.read_csv(path, sep="\t")
        if suffix.startswith(".jsonl") or suffix.startswith(".ndjson"):
            return pd.read_json(path, lines=True)
        if suffix.startswith(".json"):
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
    except Exception as exc:
        raise DataError(f"could not read {path.name}: {type(exc).__name__}: {exc}") from None
    raise DataError(f"{path.name}: unsupported file type (use CSV, TSV, JSON, JSONL or Parquet, "
                    "or a directory saved with datasets' save_to_disk)")


def _read_datasets_dir(path: Path) -> dict[str, pd.DataFrame]:
    try:
        import datasets
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path} is not a directory written by datasets' save_to_disk: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        return {name: split.to_pandas() for name, split in ds.items()}
    return {"train": ds.to_pandas()}


def stratified_split(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out ``fraction`` of each class (at least one row of classes with 2+ rows)."""
    rng = pd.Series(range(len(df))).sample(frac=1.0, random_state=seed).to_numpy()
    shuffled = df.iloc[rng]
    held = []
    for _, g in shuffled.groupby("label", sort=True):
        n = int(round(len(g) * fraction))
        if len(g) >= 2:
            n = min(max(n, 1), len(g) - 1)
        else:
            n = 0
        held.extend(g.index[:n])
    ev = df.loc[sorted(held)]
    tr = df.drop(index=held)
    return tr.reset_index(drop=True), ev.reset_index(drop=True)


def load_task(path: str | Path | None = None, text_column: str = "text", label_column: str = "label",
              split_column: str = "split", validation_fraction: float = 0.2, seed: int = 0,
              max_train: int | None = None, max_eval: int | None = None) -> TaskData:
    """Load a text-classification task.

    Splits: a ``split`` column (train / validation|dev|test), or the splits of a ``datasets``
    directory; with only training rows, a stratified ``validation_fraction`` is held out.
    ``max_train``/``max_eval`` cap the rows (stratified) to bound the cost of each candidate.
    """
    if path is None:
        path = default_data_path()
        if path is None:
            raise DataError(f"no --data given and the default {DEFAULT_DATA} is not found")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    splits = _read_datasets_dir(path) if path.is_dir() else None
    if splits is None:
        df = _read_file(path)
        if len(df) == 0:
            header = f" (only a header: {list(map(str, df.columns))})" if len(df.columns) else ""
            raise DataError(f"{path.name} has no rows{header}: nothing to train on")
        if split_column in df.columns:
            splits = {str(k).lower(): g.drop(columns=[split_column]) for k, g in df.groupby(split_column)}
        else:
            splits = {"train": df}
    for name, df in splits.items():
        missing = [c for c in (text_column, label_column) if c not in df.columns]
        if missing:
            raise DataError(f"{path.name} ({name}): no column {missing[0]!r}; columns are {list(df.columns)} "
                            "(choose with --text-column/--label-column)")
    if not any(len(df) for df in splits.values()):
        raise DataError(f"{path.name} has no rows in any split ({', '.join(sorted(splits)) or 'none'}): "
                        "nothing to train on")
    train_name = next((n for n in _TRAIN_NAMES if n in splits), None)
    if train_name is None:
        raise DataError(f"{path.name}: no 'train' split among {sorted(splits)}")
    eval_name = next((n for n in _EVAL_NAMES if n in splits), None)

    def clean(df: pd.DataFrame) -> pd.DataFrame:
        out = df[[text_column, label_column]].rename(columns={text_column: "text", label_column: "label"})
        out = out.dropna()
        out["text"] = out["text"].astype(str)
        return out.reset_index(drop=True)

    train = clean(splits[train_name])
    if len(train) == 0:
        raise DataError(f"{path.name}: the training split has no rows with text and label")
    labels = sorted({str(v) for v in train["label"]})
    if len(labels) < 2:
        raise DataError(f"{path.name}: column {label_column!r} has a single class ({labels}); need at least 2")
    if eval_name is not None:
        ev = clean(splits[eval_name])
        note = f"validation = the '{eval_name}' split"
        # Tiny validation splits (TweetEval has 40 rows) give noisy F1: use test if it is larger.
        if eval_name != "test" and "test" in splits and len(splits["test"]) > 2 * len(ev):
            ev, note = clean(splits["test"]), f"validation = the 'test' split ('{eval_name}' is tiny)"
    else:
        train, ev = stratified_split(train, validation_fraction, seed)
        note = f"validation = stratified {validation_fraction:.0%} of the training rows (seed {seed})"
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({str(v) for v in ev["label"]} - set(index))
    if unknown:
        ev = ev[ev["label"].astype(str).isin(index)]
        note += f"; dropped validation rows of classes unseen in training: {unknown}"
    train["label"] = train["label"].astype(str).map(index).astype(int)
    ev["label"] = ev["label"].astype(str).map(index).astype(int)
    if max_train is not None and len(train) > max_train:
        _, train = stratified_split(train, max_train / len(train), seed)
        note += f"; training rows capped at {len(train)}"
    if max_eval is not None and len(ev) > max_eval:
        _, ev = stratified_split(ev, max_eval / len(ev), seed)
        note += f"; validation rows capped at {len(ev)}"
    if len(ev) == 0:
        raise DataError(f"{path.name}: the validation split is empty")
    name = path.name.split(".")[0] if path.is_file() else path.name
    return TaskData(train.reset_index(drop=True), ev.reset_index(drop=True), labels, name, note)
