"""Exercises for a reader who knows PyTorch and PPO and has never seen GRPO (exercises/README.md).

Each `exNN_name.py` is what you edit; `test_NN_name.py` grades it
(`pytest exercises/test_NN_name.py`) against the reference code through `exercises.graders`.
"""
