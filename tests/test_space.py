"""The declarative search space: parsing, conditional decisions, sampling, snapping logged runs."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from xsearch.space import SearchSpace, SpaceError, config_key, default_space

TINY = Path(__file__).parent / "data" / "tiny_space.yaml"


def test_default_space_is_finite_and_has_the_three_methods():
    s = default_space()
    assert set(s.param("ft_method").values) == {"full", "lora", "partial"}
    assert s.param("model_name").values == ("sentence-transformers/all-MiniLM-L6-v2",)
    assert all(len(p.values) >= 1 for p in s.parameters)
    # LoRA rank only with LoRA, layer count only with partial freezing.
    assert dict(s.param("peft_lora_r").when) == {"ft_method": ("lora",)}
    assert dict(s.param("ft_trainable_layers").when) == {"ft_method": ("partial",)}
    # r x alpha x dropout x layers x DoRA x (module kinds: 2 without feed-forward, 1 with it x 2 ffn ranks)
    n_lora = 3 * 3 * 2 * 3 * 2 * (2 + 1 * 2)
    shared = 5 * 3 * 3 * 2 * 2 * 2 * 3
    assert s.size() == shared * (n_lora + 3 + 1)


def test_sampling_respects_conditions_and_distribution():
    s = SearchSpace.load(TINY)
    rng = random.Random(0)
    dist = s.uniform()
    dist["ft_method"] = {"full": 0.0, "lora": 1.0, "partial": 0.0}
    for _ in range(50):
        cfg = s.sample(dist, rng)
        assert cfg["ft_method"] == "lora" and cfg["peft_lora_r"] in (4, 8) and cfg["ft_trainable_layers"] is None
        assert s.validate_config(cfg) == []
    counts = Counter(s.sample(s.uniform(), rng)["ft_method"] for _ in range(600))
    assert set(counts) == {"full", "lora", "partial"} and min(counts.values()) > 120
    cfg = s.sample(s.uniform(), random.Random(1))
    for c in s.iter_configs():
        assert s.validate_config(c) == []
    bad = dict(cfg, ft_method="full", peft_lora_r=4)
    assert any("inactive" in p for p in s.validate_config(bad))


def test_range_is_discretised_and_normalise_keeps_a_floor():
    s = SearchSpace.from_dict({"parameters": {
        "model_name": ["m"], "ft_method": ["full"],
        "train_learning_rate": {"range": {"low": 1e-5, "high": 1e-3, "num": 3, "log": True}},
        "train_batch_size": {"range": {"low": 8, "high": 32, "num": 3, "integer": True}}}})
    assert s.param("train_learning_rate").values == (1e-5, 1e-4, 1e-3)
    assert s.param("train_batch_size").values == (8, 20, 32)
    d = s.normalise({"train_learning_rate": {1e-4: 1.0}}, floor=0.3)
    assert d["train_learning_rate"][1e-5] == pytest.approx(0.1)
    assert sum(d["train_learning_rate"].values()) == pytest.approx(1.0)
    # JSON round trips turn keys into strings: they still match.
    assert s.normalise({"train_batch_size": {"20": 1.0}})["train_batch_size"][20] == 1.0


def test_config_from_record_snaps_logged_values():
    s = default_space()
    rec = {"model_name": "sentence-transformers/all-MiniLM-L6-v2", "ft_method": "lora", "peft_lora_r": 8,
           "peft_lora_alpha": 16.0, "peft_lora_dropout": 0.1, "ft_trainable_layers": 6,
           "train_learning_rate": 0.00010000000000000002, "train_epochs": 2.0, "train_batch_size": 16,
           "train_warmup_ratio": None, "train_weight_decay": 0.01, "train_lr_scheduler": "cosine",
           "train_max_seq_length": 64}
    cfg = s.config_from_record(rec)
    assert cfg is not None and cfg["train_learning_rate"] == 1e-4 and cfg["train_warmup_ratio"] == 0.0
    assert cfg["ft_trainable_layers"] is None  # inactive for LoRA, whatever the record counted
    assert config_key(cfg) == config_key(s.config_from_record(dict(rec, train_epochs=2)))
    assert s.config_from_record(dict(rec, model_name="gpt2")) is None
    assert s.config_from_record(dict(rec, train_learning_rate=0.05)) is None  # far from every value


@pytest.mark.parametrize("doc, message", [
    ({}, "parameters"),
    ({"parameters": {"model_name": ["m"]}}, "ft_method"),
    ({"parameters": {"model_name": ["m"], "ft_method": {"values": []}}}, "non-empty"),
    ({"parameters": {"model_name": ["m"], "ft_method": ["full"], "peft_lora_r": {"values": [4], "when": {"x": 1}}}},
     "not an earlier parameter"),
    ({"parameters": {"model_name": ["m"], "ft_method": ["full"], "peft_lora_r": {"values": [4], "when": {"ft_method": "lora"}}}},
     "not values of"),
    ({"parameters": {"model_name": ["m"], "ft_method": ["full", "full"]}}, "duplicate"),
    ({"parameters": {"model_name": ["m"], "ft_method": ["full"], "train_learning_rate": {"range": {"low": 0, "high": 1, "num": 3, "log": True}}}},
     "log range"),
])
def test_bad_spaces_are_rejected_with_a_clear_message(doc, message):
    with pytest.raises(SpaceError, match=message):
        SearchSpace.from_dict(doc)


def test_bad_space_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("parameters: [unclosed", encoding="utf-8")
    with pytest.raises(SpaceError, match="s.yaml"):
        SearchSpace.load(p)
    with pytest.raises(SpaceError, match="does not exist"):
        SearchSpace.load(tmp_path / "missing.yaml")
