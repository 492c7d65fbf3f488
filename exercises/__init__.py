"""Exercises for a reader who knows PyTorch and PPO and has never seen GRPO (exercises/README.md,
docs/course.md).

Each `exNN_name.py` is what you edit; `test_NN_name.py` grades it
(`pytest exercises/test_NN_name.py`) through `exercises.graders`, against values recorded from the
reference code in `exercises/fixtures/`.
"""
