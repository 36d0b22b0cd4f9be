"""r1kit: the DeepSeek-R1 recipe end to end (model, RL with verifiable rewards, distillation, eval, serving)."""

__version__ = "0.1.0"
