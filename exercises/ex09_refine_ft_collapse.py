r"""Exercise 9 (diagnose, on your own run): refinement fine-tuning collapses, Critique-GRPO does not.

`--baseline refine_ft` trains on the same kind of correct refinements that Critique-GRPO mixes into
its groups, but by plain likelihood (the token-mean NLL) as answers to the bare question: no advantage,
no wrong answers pushed down beside them, no shaping f(p). Run it next to the default
Critique-GRPO run, same seed, from the repository root (on 2 CPU cores about 10 minutes for the
first, which also evaluates the untrained model, and 7 for the second, which reuses that evaluation):

    python train.py --output_dir runs/ex09_critique_grpo
    python train.py --baseline refine_ft --output_dir runs/ex09_refine_ft

Then read the two runs' files (metrics.jsonl: one line per step, plus a line per evaluation with
eval/accuracy; eval-<step>.jsonl: every held-out answer; config.json: the flags) and fill in
`answers()`. The grader reads the same files: it checks your numbers, that the refine_ft run shows
the collapse (its final held-out accuracy below its step-0 accuracy), and your diagnosis.

  "run_dir"            the refine_ft run's directory, e.g. "runs/ex09_refine_ft"
  "reference_dir"      the Critique-GRPO run's directory (same seed, baseline none)
  "accuracy"           {"step0": ..., "final": ...}: refine_ft's eval/accuracy at step 0 and at
                       its last evaluation
  "max_grad_norm"      {"refine_ft": ..., "critique_grpo": ...}: the largest grad_norm of each
                       run's training steps
  "examples_per_step"  refine_ft's baseline/examples, one number per training step, in order
  "phrase"             words (at least 10 characters) that at least half of refine_ft's final
                       held-out answers contain and fewer than a tenth of Critique-GRPO's do: what
                       did the model learn to say?
  "why"                the letter of the explanation in WHY that the numbers support

Questions to answer for yourself (not graded): where did the phrase come from (look at the
refinements in runs/ex09_critique_grpo/samples.jsonl and at critique.REFINE_TEMPLATE)? Why is a
gradient norm 10-50x larger on 1-4 examples a warning? What would `--baseline sft` (the generator's
reference solutions, also by NLL) do, and why is it not the same failure?

Grade:     pytest exercises/test_09_refine_ft_collapse.py
Solution:  exercises/graders.py, solution_09 (reads the two runs' files).
"""
from __future__ import annotations

WHY = {
    "A": "the learning rate is too high for any supervised loss on this model",
    "B": "the refinements were written with the critique in context; trained by likelihood as "
         "answers to the bare question, on a few examples a step, the model copies their wording "
         "rather than the arithmetic, which Critique-GRPO avoids by weighting the same tokens with "
         "an advantage beside the group's wrong answers and shaping them by f(p)",
    "C": "ten steps are too few for a supervised baseline to start learning",
    "D": "the answer checker marks the refinements wrong, so the model is trained on wrong answers",
}


def answers() -> dict:
    raise NotImplementedError
