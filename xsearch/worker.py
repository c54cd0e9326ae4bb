"""One search candidate, run in its own process: load the task data, build the model and the
fine-tuning method of a config, train with ``transformers.Trainer`` + ``XLogCallback`` (search id
set), evaluate (accuracy, macro F1; primary = eval_f1), and leave the record in the store.

Sentence-embedding models (a sentence-transformers folder with mean pooling, a
``sentence-transformers/`` Hub id, or ``pooling: mean`` in the space's model entry) are trained
with :class:`MeanPoolingForSequenceClassification`: the reading they were trained for (mean over
the tokens), then a linear classifier, instead of BERT's classification head, which reads a pooler
that sentence-embedding training never used and learns more slowly from it (in short runs it
predicted one class: macro F1 0.45 in the quick start).

The evaluator (xsearch/evaluator.py) starts it in a fork of a process that has already imported
torch and transformers (saving ~7 s per candidate), or as ``python -m xsearch.worker JOB.json``.
Heavy imports stay at module level on purpose: they are what the fork server preloads.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import transformers  # noqa: F401  (preloaded by the fork server)
# Imported here, not lazily: under a memory limit, mapping a library late can fail like an OOM.
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, PreTrainedModel, Trainer, TrainingArguments)
from transformers.modeling_outputs import SequenceClassifierOutput

from xlog.callback import XLogCallback
from xlog.modelfeatures import _layer_lists  # the same notion of "layer" the records use

from .curves import CurveModel, StopSpec, eval_series, should_stop
from .space import resolve_model_path

try:  # energy metering starts inside the memory limit: load it beforehand
    import codecarbon  # noqa: F401
except ImportError:
    pass

__all__ = ["MeanPoolingForSequenceClassification", "apply_method", "build_model", "compute_metrics",
           "sentence_pooling", "run"]

log = logging.getLogger("xsearch.worker")
TINY_PREFIX = "tiny:"


class _SearchCallback(XLogCallback):
    """XLogCallback whose record id is chosen by the evaluator, so that the evaluator finds the
    record of its candidate (or writes a stand-in with that id if the process is killed). With an
    early-stopping spec it asks at each evaluation whether the candidate can still beat the
    incumbent (``xsearch.curves.should_stop``) and prunes it if not."""

    def __init__(self, record_id: str, early_stop: StopSpec | None = None, **kw: Any):
        super().__init__(**kw)
        self.fixed_record_id = record_id
        self.early_stop = early_stop
        self._curve_model = CurveModel.from_dict(early_stop.model) if early_stop and early_stop.model else None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        control = super().on_evaluate(args, state, control, metrics=metrics, **kwargs) or control
        spec = self.early_stop
        if spec is not None and spec.incumbent is not None and self.record is not None and not self._closed:
            series = eval_series(self.curve(), spec.metric, getattr(state, "max_steps", None))
            why = should_stop(spec, series, self._curve_model)
            if why is not None:
                self.prune(why, control)
        return control

    def _open(self, *args: Any, **kw: Any) -> None:
        super()._open(*args, **kw)
        if self.record is not None:
            self.record["record_id"] = self.fixed_record_id


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    preds = np.argmax(logits, axis=-1)
    return {"accuracy": float(accuracy_score(labels, preds)),
            "f1": float(f1_score(labels, preds, average="macro"))}


# ---- models --------------------------------------------------------------------------------------
class MeanPoolingForSequenceClassification(PreTrainedModel):
    """A pretrained encoder (any ``AutoModel``) + mean pooling over the tokens (attention mask) +
    dropout + a linear classifier: the head that suits sentence-embedding models such as
    all-MiniLM-L6-v2, whose BERT pooler their training never used (it is dropped). Build it with
    :meth:`from_encoder`.

    It is a ``PreTrainedModel`` (``model.config`` is the encoder's, with ``num_labels``), so
    ``Trainer``, ``XLogCallback`` (architecture, sizes, trainable parameters), partial freezing
    (``base_model`` is the encoder) and ``peft`` with ``task_type=SEQ_CLS`` (the head, named
    ``classifier``, is trained in full through ``modules_to_save``) work as with the model's own
    classification class. ``config.classifier_pooling`` is ``mean`` or ``cls`` (first token).
    """

    config_class = AutoConfig  # the encoder's own config class (save_pretrained/from_pretrained round trip)
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    # Attention runs in the encoder, which chose its implementation when it was loaded.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: Any, encoder: Any = None) -> None:
        super().__init__(config)
        if encoder is None:
            encoder = AutoModel.from_config(config)
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused by sentence-embedding training, and by this head
        self.backbone = encoder
        hidden = int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))
        drop = getattr(config, "classifier_dropout", None)
        drop = drop if drop is not None else getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(float(drop if drop is not None else 0.1))
        self.classifier = nn.Linear(hidden, int(config.num_labels))
        for module in self.backbone.modules():  # post_init must not re-initialise pretrained weights
            module._is_hf_initialized = True
        self.post_init()

    def _init_weights(self, module: Any) -> None:
        if module is self.classifier:
            std = float(getattr(self.config, "initializer_range", 0.02) or 0.02)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_encoder(cls, path: str, num_labels: int, pooling: str = "mean",
                     **kw: Any) -> "MeanPoolingForSequenceClassification":
        """Load the pretrained encoder at ``path`` (a directory or a Hub id) and add the head."""
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling {pooling!r}: expected 'mean' or 'cls'")
        encoder = AutoModel.from_pretrained(path, **kw)
        config = encoder.config
        config.num_labels = int(num_labels)
        config.classifier_pooling = pooling
        return cls(config, encoder)

    def forward(self, input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None,
                labels: Any = None, inputs_embeds: Any = None, return_dict: Any = None,
                **kwargs: Any) -> SequenceClassifierOutput:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                            return_dict=True, **extra)
        hidden = out.last_hidden_state
        if getattr(self.config, "classifier_pooling", "mean") == "cls":
            pooled = hidden[:, 0]
        else:
            if attention_mask is None:
                attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def sentence_pooling(name: str, path: str, spec: dict[str, Any]) -> str | None:
    """The pooling a sentence-embedding model was trained with (``mean`` or ``cls``), else None
    (the model's own classification head is used). Order: the space's ``pooling`` entry
    (``mean``, ``cls``, or ``head`` for the model's own head), the sentence-transformers pooling
    config in the model's folder, a ``sentence-transformers/`` Hub id (mean)."""
    given = spec.get("pooling")
    if given is not None:
        given = str(given).lower()
        if given not in ("mean", "cls", "head"):
            raise ValueError(f"model {name!r}: pooling {given!r}; expected mean, cls or head")
        return None if given == "head" else given
    pooling_cfg = Path(path) / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        try:
            modes = json.loads(pooling_cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            modes = {}
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
        if modes.get("pooling_mode_cls_token"):
            return "cls"
        return None
    return "mean" if name.startswith("sentence-transformers/") else None


def parse_tiny(name: str) -> tuple[int, int]:
    """``tiny:bert-LxH`` -> (layers, hidden size)."""
    spec = name[len(TINY_PREFIX):]
    try:
        arch, dims = spec.split("-", 1)
        layers, hidden = (int(x) for x in dims.lower().split("x"))
    except ValueError:
        raise ValueError(f"tiny model {name!r}: expected tiny:bert-<layers>x<hidden>, e.g. tiny:bert-2x32") from None
    if arch != "bert":
        raise ValueError(f"tiny model {name!r}: only 'bert' tiny models can be built")
    return layers, hidden


def tiny_tokenizer(texts: list[str], vocab_size: int = 1000) -> Any:
    """A WordPiece tokenizer trained on the task's own texts (no download)."""
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


def build_model(cfg: dict[str, Any], spec: dict[str, Any], n_labels: int, train_texts: list[str]) -> tuple[Any, Any]:
    name = cfg["model_name"]
    if name.startswith(TINY_PREFIX):
        from transformers import BertConfig, BertForSequenceClassification
        layers, hidden = parse_tiny(name)
        tok = tiny_tokenizer(train_texts)
        mcfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=max(1, hidden // 16), intermediate_size=2 * hidden,
                          max_position_embeddings=512, num_labels=n_labels, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        return BertForSequenceClassification(mcfg), tok
    path = resolve_model_path(name, spec)
    if path != name:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local copy: never reach for the network
    tok = AutoTokenizer.from_pretrained(path)
    pooling = sentence_pooling(name, path, spec)
    if pooling is not None:
        model = MeanPoolingForSequenceClassification.from_encoder(path, n_labels, pooling=pooling)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=n_labels)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def apply_method(model: Any, cfg: dict[str, Any], spec: dict[str, Any], method_spec: dict[str, Any]) -> Any:
    """Full fine-tuning, LoRA, partial freezing (top N layers + head), or another peft method."""
    method = str(cfg["ft_method"]).lower()
    if method == "full":
        return model
    if method == "partial":
        n = int(cfg.get("ft_trainable_layers") or 1)
        for p in model.parameters():
            p.requires_grad = False
        layer_lists = _layer_lists(model.base_model if hasattr(model, "base_model") else model)
        if not layer_lists:
            raise ValueError(f"partial fine-tuning: no layer list found in {type(model).__name__}")
        blocks = max(layer_lists, key=len)
        for block in list(blocks)[-n:]:
            for p in block.parameters():
                p.requires_grad = True
        prefix = getattr(model, "base_model_prefix", "") + "."
        for pname, p in model.named_parameters():
            # The classification head (outside the base model) and the pooler always train.
            if not pname.startswith(prefix) or ".pooler." in pname:
                p.requires_grad = True
        return model
    import peft
    if method == "lora":
        targets = spec.get("lora_target_modules")
        conf = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=int(cfg["peft_lora_r"]),
                               lora_alpha=float(cfg.get("peft_lora_alpha") or 2 * int(cfg["peft_lora_r"])),
                               lora_dropout=float(cfg.get("peft_lora_dropout") or 0.0),
                               target_modules=list(targets) if targets else None)
    else:  # any other peft type, with keyword arguments from the space's `methods:` section
        conf = peft.get_peft_config({"peft_type": method.upper(), "task_type": "SEQ_CLS", **method_spec})
    return peft.get_peft_model(model, conf)


# ---- resource limits and supervision ---------------------------------------------------------------
def apply_memory_limit(limit_bytes: int | None) -> None:
    """Cap this process's memory: address space on CPU (an allocation beyond it fails with torch's
    "DefaultCPUAllocator: can't allocate memory", which xlog records as `oom`), the CUDA caching
    allocator's share of the device on GPU (RLIMIT_AS would break CUDA's large mappings)."""
    if not limit_bytes:
        return
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total))
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    new_hard = hard if hard != resource.RLIM_INFINITY and hard < limit_bytes else limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (min(limit_bytes, new_hard), new_hard))


def _vm_size_gib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def watch_parent(pid: int | None, interval: float = 1.0) -> None:
    """End this candidate (recorded as interrupted) if the search that started it dies, so that a
    killed search leaves no orphan training behind (and a resumed one does not race with it)."""
    if not pid:
        return

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.environ["XLOG_SIGTERM_STATUS"] = "interrupted"
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass
    threading.Thread(target=loop, name="xsearch-parent-watch", daemon=True).start()


# ---- the job ------------------------------------------------------------------------------------------
def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one candidate; returns what the record says (also written to the store)."""
    os.environ["XLOG_HOME"] = job["store"]
    os.environ["XLOG_SIGTERM_STATUS"] = "timeout"  # the evaluator sends SIGTERM only at the time limit
    if not job.get("energy", True):
        os.environ["XLOG_ENERGY"] = "0"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    watch_parent(job.get("parent_pid"))
    cfg = job["config"]
    data = Path(job["data_dir"])
    train_df = pd.read_parquet(data / "train.parquet")
    eval_df = pd.read_parquet(data / "eval.parquet")
    labels = json.loads((data / "labels.json").read_text(encoding="utf-8"))
    transformers.set_seed(int(job.get("seed", 0)))

    model, tok = build_model(cfg, job.get("model_spec") or {}, len(labels), train_df["text"].tolist())
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {v: i for i, v in enumerate(labels)}
    model = apply_method(model, cfg, job.get("model_spec") or {}, job.get("method_spec") or {})

    import datasets
    max_len = int(cfg.get("train_max_seq_length") or 128)

    def tokenize(batch: dict[str, list]) -> Any:
        return tok(batch["text"], truncation=True, max_length=max_len)
    train_ds = datasets.Dataset.from_pandas(train_df[["text", "label"]]).map(tokenize, batched=True)
    eval_ds = datasets.Dataset.from_pandas(eval_df[["text", "label"]]).map(tokenize, batched=True)

    warmup = float(cfg.get("train_warmup_ratio") or 0.0)
    spec = StopSpec.from_dict(job["early_stop"]) if job.get("early_stop") else None
    schedule: dict[str, Any] = {"eval_strategy": "epoch", "logging_strategy": "epoch"}
    if spec is not None and spec.evals_per_epoch > 1:
        # Early stopping needs a curve: evaluate (and log the loss) several times per epoch.
        batch = int(cfg.get("train_batch_size") or 16)
        steps_per_epoch = max(-(-len(train_ds) // batch), 1)
        every = max(steps_per_epoch // int(spec.evals_per_epoch), 1)
        schedule = {"eval_strategy": "steps", "eval_steps": every, "logging_strategy": "steps", "logging_steps": every}
    args = TrainingArguments(
        output_dir=str(Path(job["output_dir"])), num_train_epochs=float(cfg.get("train_epochs") or 1),
        per_device_train_batch_size=int(cfg.get("train_batch_size") or 16),
        per_device_eval_batch_size=64, learning_rate=float(cfg.get("train_learning_rate") or 5e-5),
        weight_decay=float(cfg.get("train_weight_decay") or 0.0), warmup_steps=warmup,
        lr_scheduler_type=str(cfg.get("train_lr_scheduler") or "linear"), **schedule,
        save_strategy="no", report_to=[], disable_tqdm=True,
        seed=int(job.get("seed", 0)), use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    callback = _SearchCallback(
        job["record_id"], early_stop=spec, task_name=job.get("task_name"), task_type="text-classification",
        search_id=job["search_id"], store=job["store"], text_column="text", label_column="label",
        max_seq_length=max_len, model_name=cfg["model_name"], primary_metric="eval_f1",
        greater_is_better=True, energy=job.get("energy", True))
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=compute_metrics, callbacks=[callback])
    log.info("address space before training: %.2f GiB; memory limit: %s", _vm_size_gib(),
             f"{job['memory_limit_bytes'] / 2**30:.2f} GiB" if job.get("memory_limit_bytes") else "none")
    apply_memory_limit(job.get("memory_limit_bytes"))
    trainer.train()
    rec = callback.record or {}
    return {"record_id": rec.get("record_id"), "status": rec.get("status"),
            "quality": rec.get("outcome_primary_value")}


def child_main(job_path: str, log_path: str) -> None:
    """Entry point in the candidate process: output to a log file, then run the job."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    # Per-candidate environment (e.g. CUDA_VISIBLE_DEVICES of its GPU slot), set before torch
    # touches CUDA: the fork server imported torch but never initialised CUDA.
    os.environ.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    result = run(job)
    Path(job["result_path"]).write_text(json.dumps(result), encoding="utf-8")


def serve() -> None:
    """A fork server: torch/transformers are imported once (above); each job is a fork of this
    process. Protocol on stdin/stdout, one line each: ``run JOB LOG`` -> ``pid N``; when a job's
    process ends -> ``exit N CODE`` (CODE < 0: killed by signal -CODE). Exits when stdin closes."""
    import select
    import traceback
    # The protocol gets a private copy of stdout; fd 1 goes to stderr so that a library printing
    # to stdout cannot corrupt it.
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(proto_fd, "w", buffering=1)
    print("ready", file=out, flush=True)
    children: set[int] = set()
    buf = b""
    stdin_fd = sys.stdin.fileno()
    open_ = True
    while open_ or children:
        ready, _, _ = select.select([stdin_fd] if open_ else [], [], [], 0.1)
        if ready:
            chunk = os.read(stdin_fd, 65536)
            if not chunk:
                open_ = False  # the search is gone: its candidates end by their own watchdog
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode().split(" ")
                if len(parts) != 3 or parts[0] != "run":
                    continue
                pid = os.fork()
                if pid == 0:  # the candidate
                    code = 0
                    try:
                        os.close(proto_fd)
                        devnull = os.open(os.devnull, os.O_RDONLY)
                        os.dup2(devnull, 0)
                        child_main(parts[1], parts[2])
                    except BaseException:
                        traceback.print_exc()
                        code = 1
                    finally:
                        try:
                            sys.stdout.flush()
                            sys.stderr.flush()
                        finally:
                            os._exit(code)
                children.add(pid)
                print(f"pid {pid}", file=out, flush=True)
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                print(f"exit {pid} {code}", file=out, flush=True)


if __name__ == "__main__":  # python -m xsearch.worker --serve | JOB.json [LOG]
    if len(sys.argv) < 2:
        sys.exit("usage: python -m xsearch.worker --serve | JOB.json [LOG]")
    if sys.argv[1] == "--serve":
        serve()
    else:
        child_main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.devnull)
