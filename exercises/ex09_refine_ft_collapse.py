r"""Exercise 9 (diagnose, your own run): refinement fine-tuning collapses, Critique-GRPO does not.

`--baseline refine_ft` trains on the same kind of correct refinements that Critique-GRPO mixes into
its groups, but by plain likelihood (the token-mean NLL) as answers to the bare question: no
advantage, no wrong answers pushed down beside them, no shaping f(p). Run it next to the default
Critique-GRPO run, same seed, from the repository root (each takes a few minutes on a 2-core
CPU, docs/results.md#walls-and-tests has the measured walls; the second reuses the first's
evaluation of the untrained model):

    python train.py --output_dir runs/ex09_critique_grpo
    python train.py --baseline refine_ft --output_dir runs/ex09_refine_ft

Then read the two runs' files (metrics.jsonl: one line per step, plus a line per evaluation with
eval/accuracy; eval-<step>.jsonl: every held-out answer; samples.jsonl: example answers, critiques
and refinements every 5 steps; config.json: the flags) and fill in `answers()`. The grader reads
the same files: it checks your numbers, that the refine_ft run shows the collapse (its final
held-out accuracy below its step-0 accuracy), and that your phrase is what the collapsed model says.

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
  "phrase_share"       {"refine_ft": ..., "critique_grpo": ...}: the share (0..1) of each run's
                       final answers on the first held-out set that contain your phrase (case and
                       runs of white space ignored)
  "phrase_in_refinements"  the share (0..1) of the *correct* refinements (refinement_reward > 0)
                       in the Critique-GRPO run's samples.jsonl that contain your phrase: the
                       same kind of text refine_ft trained on
  "correct_refinements"    how many correct refinements that share is over

Questions for yourself (not graded; your instructor has the answers):
  Q1. Where did the phrase come from? Look at the refinements in samples.jsonl and at the
      refinement prompt (exercise 3).
  Q2. Why is a gradient norm 10-50x larger, on 1-4 examples a step, a warning?
  Q3. Critique-GRPO trained on the same kind of refinements and does not say the phrase. Which
      parts of its loss make the difference (exercises 2, 7 and 8)?
  Q4. What would `--baseline sft` (the generator's reference solutions, also by NLL) do, and
      why is it not the same failure?
  Q5. Write the diagnosis in two sentences that cite your numbers.

Grade:  pytest exercises/test_09_refine_ft_collapse.py
"""
from __future__ import annotations


def answers() -> dict:
    raise NotImplementedError
