r"""Exercise 2 (by hand): a correct refinement gives an all-wrong group its signal back.

GRPO's advantage is r - mean(group) (exercise 0). When every answer to a question is wrong, every r
is 0, every A is 0, and the question contributes no gradient at all ("zero-advantage group").
Critique-GRPO critiques the answers of such a group, lets the policy refine one with the critique
in its prompt, and adds the refinement to the group (7 initial answers + 1 refinement = 8). The
fraction of zero-advantage groups before and after mixing is the paper's central diagnostic
(train/zero_adv_frac_before / _after in metrics.jsonl).

One step of 4 questions, 7 initial answers each (rewards below). Refinements are made only for
all-wrong groups (the paper's --refine_scope all_wrong); each such group gets k = 1 refinement,
appended after its 7 answers, with the reward in REFINEMENT_REWARDS.

Compute by hand (pencil, or plain Python arithmetic in `answers()`: this grader rejects a file
that imports the repository's code, loss, critique, train or another exercise) and fill in
`answers()`. Numbers are checked to about 3 significant digits.

  "advantages_group0_before"  group 0's 7 advantages before mixing (its 7 answers alone)
  "rewards_group0"          the 8 rewards group 0 trains on (7 initial, then the refinement)
  "advantages_group0"       its 8 advantages after mixing, A = r - mean (no std, the paper)
  "positive_index"          the position (0..7) in group 0 of the only sequence with A > 0
  "advantages_group0_std"   the same 8 advantages divided by (std + 1e-6), std with n - 1 (the
                            release's --scale_adv_by_std)
  "advantages_group1"       the 7 advantages of group 1 (not refined: why?)
  "advantages_group2"       the 8 advantages of group 2 (its refinement was wrong too)
  "sum_advantages_group0"   the sum of "advantages_group0"
  "zero_adv_frac_before"    fraction of the 4 groups whose 7 initial rewards are all equal
  "zero_adv_frac_after"     the same fraction after mixing (all rewards a group trains on equal)

Questions for yourself (not graded; your instructor has the answers):
  Q1. How hard does the correct refinement push its own tokens compared to how hard each wrong
      answer is pushed down? Which has more total weight, the one right or the seven wrong?
  Q2. Why does group 3 get no refinement, and does it teach anything?
  Q3. What does dividing by the std do to the size of the push, and why is "all-equal -> 0
      exactly" essential there?
  Q4. Group 2's refinement was wrong too. What did mixing it in cost, and what did it buy?

Grade:  pytest exercises/test_02_all_wrong_group.py
"""
from __future__ import annotations

INITIAL_REWARDS = [
    [0, 0, 0, 0, 0, 0, 0],   # group 0: all wrong
    [1, 0, 0, 1, 0, 0, 0],   # group 1: some right
    [0, 0, 0, 0, 0, 0, 0],   # group 2: all wrong
    [1, 1, 1, 1, 1, 1, 1],   # group 3: all right
]
REFINEMENT_REWARDS = {0: 1.0, 2: 0.0}  # group -> reward of the refinement appended to it


def answers() -> dict:
    raise NotImplementedError
