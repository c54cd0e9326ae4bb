"""Shared fixtures: a local Hub-compatible server, and schema-valid records built quickly."""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from xlog import schema as S


@pytest.fixture(autouse=True)
def _hub_reachable(monkeypatch):
    """The tests' local Hub server is the only network they use: an offline switch inherited
    from the caller's environment must not block it (no test downloads anything)."""
    import huggingface_hub.constants
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub():
    """A fresh local Hub-compatible server on 127.0.0.1 (real HTTP), stopped afterwards."""
    from hubserver import HubServer
    with HubServer() as server:
        yield server


@pytest.fixture
def hub_env(hub, monkeypatch):
    """Point huggingface_hub at the local server for this process and its children."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("XLOG_RETRY_BASE_S", "0.05")
    return hub


_MODELS = ["bert-base-uncased", "distilbert-base-uncased", "roberta-base", "gpt2"]
_TASKS = ["sms_spam", "stance_climate", "ag_news"]


def synthetic_record(rng: random.Random, **overrides: Any) -> dict:
    """A schema-v1-valid record with plausible values (for store/remote tests, not estimators)."""
    status = rng.choices(["completed", "failed", "oom", "timeout"], [0.8, 0.08, 0.1, 0.02])[0]
    created = datetime(2025, rng.randint(1, 6), rng.randint(1, 28), rng.randint(0, 23), tzinfo=timezone.utc)
    runtime = round(rng.uniform(20, 4000), 3)
    rec: dict[str, Any] = {
        "record_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "schema_version": S.CURRENT_VERSION, "created_at": created,
        "ended_at": created + timedelta(seconds=runtime), "xlog_version": "0.1.0", "source": "xlog",
        "status": status, "task_name": rng.choice(_TASKS), "task_type": "text-classification",
        "task_n_train": rng.randint(200, 20000), "task_n_classes": rng.randint(2, 5),
        "model_name": rng.choice(_MODELS), "ft_method": rng.choice(["full", "lora"]),
        "train_learning_rate": 10 ** rng.uniform(-5.5, -3), "train_batch_size": rng.choice([8, 16, 32]),
        "outcome_total_runtime_s": runtime, "energy_kwh": round(runtime * 3e-5, 6), "energy_source": "codecarbon",
    }
    if status == "completed":
        rec.update(outcome_primary_metric="eval_f1", outcome_primary_value=round(rng.uniform(0.3, 0.95), 4),
                   outcome_greater_is_better=True, outcome_metrics={"eval_f1": 0.5, "eval_loss": 0.7})
    else:
        rec.update(error_type={"failed": "RuntimeError", "oom": "OutOfMemoryError", "timeout": "TimeoutError"}[status],
                   error_message="scrubbed")
    rec.update(overrides)
    assert not S.validate_record(rec), S.validate_record(rec)
    return rec


@pytest.fixture
def make_records() -> Callable[..., list[dict]]:
    """``make_records(n, seed=0, **overrides)`` -> n valid record dicts."""
    def make(n: int, seed: int = 0, **overrides: Any) -> list[dict]:
        rng = random.Random(seed)
        return [synthetic_record(rng, **overrides) for _ in range(n)]
    return make
