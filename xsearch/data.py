"""Loading the user's task data for a search: a file (CSV, JSON, JSONL, Parquet) or a local
``datasets`` directory, with a validation split when none is given (stratified by class for
classification, grouped by context for question answering). The task kinds (``xsearch.tasks``)
choose the columns; this module reads, splits and caps."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import pandas as pd

#: The data `xsearch run` uses without --data (shipped with the repository, see examples/data/SOURCES.md).
DEFAULT_DATA = "examples/data/sms_spam_600.parquet"
_TRAIN_NAMES = ("train",)
_EVAL_NAMES = ("validation", "valid", "dev", "val", "eval", "test")


class DataError(ValueError):
    """The data cannot be used for a search; the message says why."""


@dataclass
class TaskData:
    """Train/validation frames with the task kind's canonical columns: ``text`` and ``label`` (a
    class index) for classification; ``question``, ``answer`` (and ``context``, ``answers``) for
    question answering; ``prompt`` and ``response``, or ``text``, for causal-LM fine-tuning."""

    train: pd.DataFrame
    eval: pd.DataFrame
    labels: list[str]
    name: str
    split_note: str
    task_type: str = "text-classification"

    def save(self, directory: Path) -> None:
        """Write train/eval Parquet files (and the label list of a classification task) for the
        evaluator's workers."""
        directory.mkdir(parents=True, exist_ok=True)
        self.train.to_parquet(directory / "train.parquet", index=False)
        self.eval.to_parquet(directory / "eval.parquet", index=False)
        if self.labels or self.task_type == "text-classification":
            (directory / "labels.json").write_text(json.dumps(self.labels), encoding="utf-8")

    @classmethod
    def from_dir(cls, directory: Path, task_type: str = "text-classification", name: str = "") -> "TaskData":
        """What ``save`` wrote (in a worker)."""
        directory = Path(directory)
        labels_path = directory / "labels.json"
        labels = json.loads(labels_path.read_text(encoding="utf-8")) if labels_path.is_file() else []
        return cls(pd.read_parquet(directory / "train.parquet"), pd.read_parquet(directory / "eval.parquet"),
                   labels, name, "", task_type)


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


def read_splits(path: str | Path, split_column: str = "split") -> tuple[dict[str, pd.DataFrame], Path]:
    """The splits of a data file (by its ``split`` column, else one ``train`` split) or of a
    ``datasets`` directory, lower-cased split names; refuses missing, empty and row-less data."""
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
    if not any(len(df) for df in splits.values()):
        raise DataError(f"{path.name} has no rows in any split ({', '.join(sorted(splits)) or 'none'}): "
                        "nothing to train on")
    return splits, path


def task_name_of(path: Path) -> str:
    return path.name.split(".")[0] if path.is_file() else path.name


def find_column(columns: list[str], role: str, given: str | None, candidates: tuple[str, ...]) -> str | None:
    """The user's column for a role: the one given (must exist), else the first candidate name
    present (case-insensitive), else None."""
    if given:
        return given if given in columns else None
    lower = {str(c).lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def random_split(df: pd.DataFrame, fraction: float, seed: int,
                 group: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out about ``fraction`` of the rows (at least one, at most all but one). With ``group``
    (e.g. the context of QA rows), whole groups are held out, so that no context is seen in both."""
    if len(df) < 2:
        return df.reset_index(drop=True), df.iloc[:0].reset_index(drop=True)
    if group is not None and group in df.columns and df[group].nunique() >= 2:
        keys = pd.Series(df[group].astype(str).unique())
        keys = keys.sample(frac=1.0, random_state=seed).tolist()
        target = max(1, int(round(len(df) * fraction)))
        held_keys, n = set(), 0
        sizes = df[group].astype(str).value_counts()
        for k in keys:
            if n >= target or len(held_keys) >= len(keys) - 1:
                break
            held_keys.add(k)
            n += int(sizes[k])
        mask = df[group].astype(str).isin(held_keys)
        return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)
    order = pd.Series(range(len(df))).sample(frac=1.0, random_state=seed).to_numpy()
    n = min(max(int(round(len(df) * fraction)), 1), len(df) - 1)
    held = sorted(order[:n])
    return df.drop(index=df.index[held]).reset_index(drop=True), df.iloc[held].reset_index(drop=True)


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
    splits, path = read_splits(path, split_column)
    for name, df in splits.items():
        missing = [c for c in (text_column, label_column) if c not in df.columns]
        if missing:
            raise DataError(f"{path.name} ({name}): no column {missing[0]!r}; columns are {list(df.columns)} "
                            "(choose with --text-column/--label-column)")
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
    return TaskData(train.reset_index(drop=True), ev.reset_index(drop=True), labels, task_name_of(path), note)


def read_role_splits(path: str | Path | None, columns: Mapping[str, str], roles: Iterable[str], *,
                     kind_reads: str, search_needs: str) -> tuple[dict[str, pd.DataFrame], Path, list[str]]:
    """The first checks of a task kind whose rows are texts in named columns: the ``--column``
    roles given must be the kind's (``kind_reads`` says which, in the error), a data file is
    required (``search_needs`` says so); then the splits, the file's path and its columns."""
    unknown = sorted(set(columns) - set(roles))
    if unknown:
        raise DataError(f"{kind_reads}, not {unknown}")
    if path is None:
        raise DataError(search_needs)
    splits, p = read_splits(path)
    return splits, p, list(next(iter(splits.values())).columns)


def load_columns_task(path: str | Path | None, task_type: str, roles: dict[str, str | None], *,
                      split_column: str = "split", validation_fraction: float = 0.2, seed: int = 0,
                      max_train: int | None = None, max_eval: int | None = None,
                      group: str | None = None,
                      prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> TaskData:
    """A task whose rows are texts in named columns (question answering, causal-LM data).

    ``roles`` maps each canonical column name to the user's column (already resolved by the
    task kind; every split must have them). Splits: a ``split`` column or a ``datasets``
    directory (train / validation|dev|test); with a single split of another name (e.g. a
    validation-only SQuAD sample) or only training rows, ``validation_fraction`` of the rows is
    held out (whole ``group``s, e.g. contexts, when given). Rows with an empty required column
    are dropped; ``max_train``/``max_eval`` cap the rows (a seeded sample). ``prepare`` turns the
    selected columns into canonical ones first (e.g. SQuAD's list of answers into ``answer`` +
    ``answers``; ``answers`` is the only column that may hold lists).
    """
    if path is None:
        raise DataError(f"a {task_type} search needs --data (a file or datasets directory)")
    splits, path = read_splits(path, split_column)

    def clean(df: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({canon: df[col] for canon, col in roles.items() if col is not None})
        if prepare is not None:
            out = prepare(out)
        for canon in out.columns:
            if canon != "answers":
                out[canon] = out[canon].where(out[canon].notna(), None)
        need = [c for c in out.columns if c != "answers"]
        out = out.dropna(subset=need)
        for canon in need:
            out[canon] = out[canon].astype(str)
        out = out[(out[need].apply(lambda col: col.str.strip().str.len() > 0)).all(axis=1)]
        return out.reset_index(drop=True)

    train_name = next((n for n in _TRAIN_NAMES if n in splits), None)
    eval_name = next((n for n in _EVAL_NAMES if n in splits), None)
    if train_name is None and len(splits) == 1:
        # One split that is not called train (SQuAD's dev set): train on part of it.
        train_name, eval_name = next(iter(splits)), None
    if train_name is None:
        raise DataError(f"{path.name}: no 'train' split among {sorted(splits)}")
    train = clean(splits[train_name])
    if len(train) == 0:
        raise DataError(f"{path.name}: the '{train_name}' split has no rows with every required column filled")
    if eval_name is not None and eval_name != train_name:
        ev = clean(splits[eval_name])
        note = f"validation = the '{eval_name}' split"
    else:
        train, ev = random_split(train, validation_fraction, seed, group=group)
        by = f", whole {group}s" if group and group in train.columns else ""
        note = f"validation = {validation_fraction:.0%} of the '{train_name}' rows held out (seed {seed}{by})"
    if max_train is not None and len(train) > max_train:
        train = train.sample(n=max_train, random_state=seed).sort_index()
        note += f"; training rows capped at {len(train)}"
    if max_eval is not None and len(ev) > max_eval:
        ev = ev.sample(n=max_eval, random_state=seed).sort_index()
        note += f"; validation rows capped at {len(ev)}"
    if len(ev) == 0:
        raise DataError(f"{path.name}: the validation split is empty")
    return TaskData(train.reset_index(drop=True), ev.reset_index(drop=True), [], task_name_of(path), note, task_type)
