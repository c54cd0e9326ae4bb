"""Task meta-features computed on a bounded sample of the training data (never raw text)."""
from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

TEXT_COLUMNS = ("text", "sentence", "content", "document", "review", "question", "prompt", "tweet", "input")
LABEL_COLUMNS = ("label", "labels", "label_ids", "class", "target", "y")
# Generative data (question answering, prompt -> response): the columns that describe it.
CONTEXT_COLUMNS = ("context", "passage")
QUESTION_COLUMNS = ("question", "query")
PROMPT_COLUMNS = ("prompt", "instruction", "input")
ANSWER_COLUMNS = ("answer", "answers", "answer_text", "response", "output", "completion", "target")
IGNORE_INDEX = -100  # label positions the loss ignores (the prompt, padding) in causal-LM data
DEFAULT_MAX_SAMPLE = 2000
_WORD_RE = re.compile(r"\w+", re.UNICODE)


def dataset_size(ds: Any) -> int | None:
    """Number of rows, or None for iterables whose length is unknown."""
    if ds is None:
        return None
    try:
        n = len(ds)
    except TypeError:
        return None
    return int(n)


def _sample_rows(ds: Any, k: int, seed: int) -> tuple[list[Mapping] | None, dict[str, list] | None]:
    """Up to k rows as dicts, or columns as lists (datasets.Dataset), or (None, None) if unseen."""
    n = dataset_size(ds)
    try:  # Hugging Face datasets: columnar access without materialising rows
        import datasets as hfds
        if isinstance(ds, hfds.Dataset):
            idx = sorted(random.Random(seed).sample(range(n), min(k, n))) if n else []
            sub = ds.select(idx)
            return None, {c: list(sub[c]) for c in sub.column_names}
        if isinstance(ds, hfds.IterableDataset):
            return [r for r in ds.take(k)], None
    except ImportError:
        pass
    if n is None:
        return None, None  # a torch IterableDataset may be a one-shot stream: never consume it
    if not hasattr(ds, "__getitem__"):
        return None, None
    idx = sorted(random.Random(seed).sample(range(n), min(k, n))) if n else []
    rows = []
    for i in idx:
        item = ds[i]
        if not isinstance(item, Mapping):
            return None, None  # tuples of tensors: columns have no names to interpret
        rows.append(item)
    return rows, None


def _columns(rows: list[Mapping] | None, cols: dict[str, list] | None) -> dict[str, list]:
    if cols is not None:
        return cols
    if not rows:
        return {}
    keys = list(rows[0].keys())
    return {k: [r.get(k) for r in rows] for k in keys}


def _to_py(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _pick(cols: dict[str, list], wanted: str | None, candidates: Sequence[str], kind: str) -> str | None:
    if wanted:
        return wanted if wanted in cols else None
    for c in candidates:
        if c in cols:
            return c
    if kind == "text":
        for c, vals in cols.items():
            if vals and isinstance(vals[0], str):
                return c
    return None


def _class_labels(ds: Any, label_col: str | None) -> int | None:
    """Number of classes declared by a datasets ClassLabel feature, if any."""
    feats = getattr(ds, "features", None)
    if not feats or not label_col or label_col not in feats:
        return None
    n = getattr(feats[label_col], "num_classes", None)
    return int(n) if n else None


def _stats(values: list[float]) -> tuple[float, float, float | None]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((x - m) ** 2 for x in values) / len(values))
    return m, sd, (sd / m if m > 0 else None)


def _token_lengths(texts: list[str], tokenizer: Any, special: bool = True) -> list[int] | None:
    if tokenizer is None or not callable(tokenizer):
        return None
    tlog = logging.getLogger("transformers.tokenization_utils_base")
    old = tlog.level
    tlog.setLevel(logging.ERROR)  # "sequence longer than max length" is expected: no truncation here
    try:
        enc = tokenizer(texts, add_special_tokens=special, truncation=False)
        return [len(x) for x in enc["input_ids"]]
    except Exception:
        return None
    finally:
        tlog.setLevel(old)


def _lengths_from_ids(ids: list, masks: list | None) -> list[int] | None:
    out = []
    for i, x in enumerate(ids):
        x = _to_py(x)
        if not isinstance(x, list):
            return None
        if masks is not None:
            out.append(int(sum(_to_py(masks[i]))))
        else:
            out.append(len(x))
    return out


def compute_task_features(train_dataset: Any, eval_dataset: Any = None, tokenizer: Any = None,
                          text_column: str | None = None, label_column: str | None = None,
                          max_sample: int = DEFAULT_MAX_SAMPLE, seed: int = 0) -> dict[str, Any]:
    """Meta-features of a task from its datasets; unknown values are None, never guessed."""
    return task_features_job(train_dataset, eval_dataset, tokenizer, text_column, label_column, max_sample, seed)()


def task_features_job(train_dataset: Any, eval_dataset: Any = None, tokenizer: Any = None,
                      text_column: str | None = None, label_column: str | None = None,
                      max_sample: int = DEFAULT_MAX_SAMPLE, seed: int = 0) -> Callable[[], dict[str, Any]]:
    """``compute_task_features`` in two parts: what must run on the caller's (training) thread runs
    now, and the rest is returned as a job that a background thread may run while training goes on.

    Only objects that the training loop does not use concurrently are left to the job: a plain
    Arrow-backed ``datasets.Dataset`` (immutable; no on-the-fly transform) and a private copy of a fast
    tokenizer (the Rust backend of the caller's tokenizer must not be used from two threads at once:
    a collator tokenizing on the fly would fail with "Already borrowed"). Anything else that may run
    user code (a torch dataset's ``__getitem__``, a streaming dataset, ``set_transform``) or a slow
    tokenizer is read now, and the job only returns the result.
    """
    sizes = {"task_n_train": dataset_size(train_dataset), "task_n_eval": dataset_size(eval_dataset)}
    if isinstance(eval_dataset, Mapping):  # Trainer accepts a dict of eval sets
        each = [dataset_size(d) for d in eval_dataset.values()]
        sizes["task_n_eval"] = sum(each) if each and all(x is not None for x in each) else None
    counter = _private_token_counter(tokenizer)
    if _readable_later(train_dataset) and (tokenizer is None or counter is not None):
        return lambda: _features(dict(sizes), _sample_rows(train_dataset, max_sample, seed), text_column,
                                 label_column, counter, train_dataset)
    count = counter or (lambda texts, special=True: _token_lengths(texts, tokenizer, special))
    out = _features(dict(sizes), _sample_rows(train_dataset, max_sample, seed), text_column, label_column,
                    count, train_dataset)
    return lambda: dict(out)


def _readable_later(ds: Any) -> bool:
    """True when another thread may read ``ds`` while training reads it: no dataset, or an Arrow-backed
    ``datasets.Dataset`` without an on-the-fly transform (``set_transform``/``with_transform``)."""
    if ds is None:
        return True
    try:
        import datasets as hfds
    except ImportError:
        return False
    if not isinstance(ds, hfds.Dataset):
        return False
    fmt = getattr(ds, "format", None) or {}
    return fmt.get("type") != "custom"


def _private_token_counter(tokenizer: Any) -> Callable[..., list[int] | None] | None:
    """A token counter that never touches ``tokenizer`` again: a copy of a fast tokenizer's backend,
    serialized now (None for slow tokenizers and other callables)."""
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        return None
    try:
        spec = tokenizer.backend_tokenizer.to_str()
    except Exception:
        return None

    def count(texts: list[str], special: bool = True) -> list[int] | None:
        try:
            from tokenizers import Tokenizer
            tok = Tokenizer.from_str(spec)
            tok.no_truncation()  # the same lengths as tokenizer(texts, truncation=False)
            tok.no_padding()
            return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=special)]
        except Exception:
            return None
    return count


def _features(out: dict[str, Any], sample: tuple[list[Mapping] | None, dict[str, list] | None],
              text_column: str | None, label_column: str | None,
              count_tokens: Callable[..., list[int] | None] | None, train_dataset: Any) -> dict[str, Any]:
    if train_dataset is None:
        return out
    cols = _columns(*sample)
    if not cols:
        return out
    n_sample = len(next(iter(cols.values())))
    out["task_sample_size"] = n_sample
    if n_sample == 0:
        return out

    gen = _generative_columns(cols) if text_column is None else None
    label_col = _pick(cols, label_column, LABEL_COLUMNS, "label") if gen is None or label_column else None
    if label_col is not None:
        labels = [_to_py(v) for v in cols[label_col]]
        if all(isinstance(v, (int, str, bool)) or v is None for v in labels):  # classification labels
            counts = Counter(v for v in labels if v is not None and v != -100)
            total = sum(counts.values())
            if total:
                probs = [c / total for c in counts.values()]
                declared = _class_labels(train_dataset, label_col)
                out["task_n_classes"] = declared or len(counts)
                out["task_class_entropy"] = float(-sum(p * math.log2(p) for p in probs))
                out["task_class_prob_min"] = min(probs) if not declared or declared == len(counts) else 0.0
                out["task_class_prob_max"] = max(probs)
                out["task_imbalance_ratio"] = (max(probs) / out["task_class_prob_min"]
                                               if out["task_class_prob_min"] else None)

    if gen is not None:  # what the model reads: context + question, or the prompt
        texts = [t for t in (_prompt_text(cols, gen, i) for i in range(n_sample)) if t]
    else:
        text_col = _pick(cols, text_column, TEXT_COLUMNS, "text")
        texts = [t for t in cols.get(text_col, []) if isinstance(t, str)] if text_col else []
    if texts:
        out["task_chars_mean"], out["task_chars_std"], out["task_chars_cv"] = _stats([len(t) for t in texts])
        words = [w.lower() for t in texts for w in _WORD_RE.findall(t)]
        out["task_type_token_ratio"] = len(set(words)) / len(words) if words else None
        tok_lengths = count_tokens(texts) if count_tokens is not None else None
    elif "input_ids" in cols:  # already tokenized: token statistics only
        tok_lengths = _lengths_from_ids(cols["input_ids"], cols.get("attention_mask"))
    else:
        tok_lengths = None
    if "input_ids" in cols:  # the padded/truncated length the model really sees
        seq = _lengths_from_ids(cols["input_ids"], None)
        if seq:
            out["train_max_seq_length"] = max(seq)
    if tok_lengths:
        out["task_tokens_mean"], out["task_tokens_std"], out["task_tokens_cv"] = _stats([float(x) for x in tok_lengths])
    if gen is not None:
        out.update(_generative_features(cols, gen, n_sample, count_tokens))
    elif "labels" in cols:
        out.update(_label_mask_features(cols))
    return out


# ---- generative data ------------------------------------------------------------------------
def _generative_columns(cols: Mapping[str, list]) -> dict[str, str] | None:
    """The roles of the columns of generative data: an answer column of text beside a question, a
    prompt or a context; None for other data (classification, plain text)."""
    def first(names: Sequence[str]) -> str | None:
        for c in names:
            vals = cols.get(c)
            if vals and any(_answer_text(v) is not None for v in vals[:20]):
                return c
        return None
    roles = {"context": first(CONTEXT_COLUMNS), "question": first(QUESTION_COLUMNS),
             "prompt": first(PROMPT_COLUMNS), "answer": first(ANSWER_COLUMNS)}
    if roles["answer"] is None or not (roles["question"] or roles["prompt"] or roles["context"]):
        return None
    return {k: v for k, v in roles.items() if v is not None}


def _answer_text(v: Any) -> str | None:
    """The text of a cell: a string, the first of a list of strings, or the first ``text`` of a
    SQuAD-style answers dict ({"text": [...], "answer_start": [...]})."""
    v = _to_py(v)
    if isinstance(v, Mapping):
        v = _to_py(v.get("text"))
    if isinstance(v, (list, tuple)):
        v = _to_py(v[0]) if v else None
    return v if isinstance(v, str) else None


def data_kind(dataset: Any) -> str | None:
    """``question-answering`` when a dataset's columns are those of question answering (a question
    and an answer column), else None. Reads column names (or the first row of a map-style dataset)
    only: cheap enough for the training thread."""
    names: list[str] = []
    try:
        names = list(getattr(dataset, "column_names", None) or [])
        if not names and dataset is not None and dataset_size(dataset) and hasattr(dataset, "__getitem__"):
            row = dataset[0]
            names = list(row.keys()) if isinstance(row, Mapping) else []
    except Exception:
        return None
    has = set(names)
    if has & set(QUESTION_COLUMNS) and has & set(ANSWER_COLUMNS):
        return "question-answering"
    return None


def _prompt_text(cols: Mapping[str, list], gen: Mapping[str, str], i: int) -> str | None:
    parts = [_answer_text(cols[gen[r]][i]) for r in ("context", "question", "prompt") if r in gen]
    parts = [p for p in parts if p]
    return "\n".join(parts) if parts else None


def _token_stats(out: dict[str, Any], prefix: str, texts: list[str],
                 count_tokens: Callable[..., list[int] | None] | None) -> None:
    lengths = count_tokens(texts, False) if count_tokens is not None and texts else None
    if lengths:
        out[f"{prefix}_mean"], out[f"{prefix}_std"], _ = _stats([float(x) for x in lengths])


def _generative_features(cols: Mapping[str, list], gen: Mapping[str, str], n: int,
                         count_tokens: Callable[..., list[int] | None] | None) -> dict[str, Any]:
    """Lengths of prompt, context, question and answer (tokens without special tokens, answer
    characters), question-context vocabulary overlap, and how often the answer is in the context."""
    def texts(role: str) -> list[str | None]:
        return [_answer_text(v) for v in cols[gen[role]]] if role in gen else [None] * n
    context, question, answer = texts("context"), texts("question"), texts("answer")
    prompts = [_prompt_text(cols, gen, i) for i in range(n)]
    out: dict[str, Any] = {}
    ans = [a for a in answer if a is not None]
    if ans:
        out["task_answer_chars_mean"], out["task_answer_chars_std"], _ = _stats([float(len(a)) for a in ans])
    for prefix, values in (("task_prompt_tokens", prompts), ("task_context_tokens", context),
                           ("task_question_tokens", question), ("task_answer_tokens", answer)):
        _token_stats(out, prefix, [t for t in values if t], count_tokens)
    overlaps, inside = [], []
    for c, q, a in zip(context, question, answer):
        if not c:
            continue
        cw = {w.lower() for w in _WORD_RE.findall(c)}
        if q:
            qw = {w.lower() for w in _WORD_RE.findall(q)}
            if qw:
                overlaps.append(len(qw & cw) / len(qw))
        if a and a.strip():
            inside.append(1.0 if a.strip().lower() in c.lower() else 0.0)
    if overlaps:
        out["task_question_context_overlap"] = sum(overlaps) / len(overlaps)
    if inside:
        out["task_answer_in_context"] = sum(inside) / len(inside)
    return out


def _label_mask_features(cols: Mapping[str, list]) -> dict[str, Any]:
    """Prompt and answer lengths of pre-tokenized causal-LM data: the label positions masked with
    -100 are the prompt, the others the answer (positions the attention mask drops are padding)."""
    labels, masks = cols.get("labels") or [], cols.get("attention_mask")
    prompt, answer = [], []
    for i, lab in enumerate(labels):
        lab = _to_py(lab)
        if not isinstance(lab, list) or not lab or not all(isinstance(x, int) for x in lab[:8]):
            return {}  # class labels (ints) or something else: not token labels
        mask = _to_py(masks[i]) if masks is not None else None
        if not isinstance(mask, list) or len(mask) != len(lab):
            mask = [1] * len(lab)
        prompt.append(float(sum(1 for x, m in zip(lab, mask) if m and x == IGNORE_INDEX)))
        answer.append(float(sum(1 for x, m in zip(lab, mask) if m and x != IGNORE_INDEX)))
    out: dict[str, Any] = {}
    if answer:
        out["task_prompt_tokens_mean"], out["task_prompt_tokens_std"], _ = _stats(prompt)
        out["task_answer_tokens_mean"], out["task_answer_tokens_std"], _ = _stats(answer)
    return out
