"""A real training script that ends badly in a chosen way; run by test_failures.py in a subprocess.

usage: python failing_run.py MODE OUT_DIR   (MODE: oom | cuda-oom | wait)
  oom       a memory limit (RLIMIT_AS) below what a large batch needs: the host allocator fails
  cuda-oom  on a GPU, a 2048-wide model whose gradients and Adam states exceed a 1 GiB cap on
            CUDA's caching allocator: a real torch.OutOfMemoryError from CUDA allocation
  wait  trains "forever"; writes OUT_DIR/started after a few steps so the test can signal it
        (or kill it: $FAILING_RUN_HEARTBEAT_S sets the callback's heartbeat_s, default 30)
"""
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import tiny  # noqa: E402
from transformers import Trainer, TrainerCallback  # noqa: E402

from xlog import XLogCallback  # noqa: E402

mode, out = sys.argv[1], Path(sys.argv[2])


class Started(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3:
            (out / "started").write_text("1")


def main() -> None:
    train, _ = tiny.classification_datasets(n=200, max_length=64)
    model = tiny.bert_classifier()
    kw = {"max_steps": 100000} if mode == "wait" else {"per_device_train_batch_size": 4096}
    if mode == "oom":
        # Batch of 4096 x 64 tokens with 2 heads: the attention scores alone need far more
        # than the 1 GiB of headroom allowed here.
        model = tiny.bert_classifier()
        train = train.select([i % len(train) for i in range(4096)])
        used = _vm_bytes()
        resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))
    if mode == "cuda-oom":
        import torch
        model = tiny.bert_classifier(hidden_size=2048)
        kw = {"per_device_train_batch_size": 512, "use_cpu": False}
        train = train.select([i % len(train) for i in range(2048)])
        torch.cuda.set_per_process_memory_fraction((1 << 30) / torch.cuda.get_device_properties(0).total_memory)
    trainer = Trainer(model=model, args=tiny.training_args(out / "o", **kw), train_dataset=train,
                      processing_class=tiny.tokenizer(), callbacks=[XLogCallback(task_name="fail", heartbeat_s=float(os.environ.get("FAILING_RUN_HEARTBEAT_S", 30))),
                                 Started()])
    trainer.train()


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


if __name__ == "__main__":
    main()
