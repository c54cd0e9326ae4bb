"""Two-process data-parallel training on CPU (gloo); run by test_distributed.py through torchrun."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tiny  # noqa: E402
from transformers import Trainer  # noqa: E402

from xlog import XLogCallback  # noqa: E402

train, _ = tiny.classification_datasets()
trainer = Trainer(model=tiny.bert_classifier(),
                  args=tiny.training_args(os.path.join(sys.argv[1], "o"), ddp_backend="gloo",
                                          per_device_train_batch_size=8),
                  train_dataset=train, processing_class=tiny.tokenizer(), callbacks=[XLogCallback(task_name="ddp")])
trainer.train()
