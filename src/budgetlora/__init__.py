"""budgetlora: LoRA fine-tuning of pretrained encoders for text classification under a hard
budget of trainable parameters."""

__version__ = "0.1.0"
