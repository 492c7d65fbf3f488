r"""Exercise 0 (warm-up, by hand): GRPO's advantage, without any critique.

PPO scores an action with an advantage A = (return) - V(s) from a learned value network. GRPO
(Group Relative Policy Optimization) has no value network: it samples a *group* of answers to the
same question, scores each 0 (wrong) or 1 (right), and uses the group's mean reward as the
baseline:

    A_i = r_i - mean_{j in group} r_j                          (the paper)
    A_i = (r_i - mean) / (std + 1e-6)                          (the release; std with n - 1)

Every token of answer i shares its A_i. The per-token loss of a sampled answer is PPO's surrogate
-A_i * ratio with ratio = exp(logp - old_logp); with one update per batch of samples the ratio is
exactly 1, so d loss / d logp = -A_i for every token of answer i.

A step of 4 questions with 4 answers each has these rewards (GROUPS below). Compute by hand
(pencil, or plain Python arithmetic in `answers()`; this grader rejects a file that imports the
repository's code: loss, critique, train or another exercise) and fill in `answers()`:

  "baseline_q0"        GRPO's baseline for the answers to question 0 (it replaces PPO's V(s))
  "advantages_q0"      the 4 advantages of question 0, A = r - mean (no std)
  "advantages_q1"      the same for question 1
  "advantages_q2"      the same for question 2 (all wrong)
  "advantages_q0_std"  question 0's advantages divided by (std + 1e-6), std with n - 1
  "advantages_q2_std"  question 2's, likewise
  "grad_logp_q0"       d loss / d logp for a token of each of question 0's 4 answers (ratio 1)
  "sum_advantages_q1"  the sum of "advantages_q1"
  "zero_adv_frac"      the fraction of the 4 questions whose answers all got the same reward
  "pushed_up_q1"       the indices (0..3) of question 1's answers whose tokens gradient descent
                       makes more likely, in increasing order

Numbers are checked to about 3 significant digits (write 0.75, not 3/4 as a string).

Questions for yourself (not graded; your instructor has the answers):
  Q1. Why does the sum of a group's advantages always come out as it does, and what does that
      say about the loss value GRPO logs?
  Q2. Questions 2 and 3 get no gradient at all. What does each of them say about the policy,
      and which one would a method that adds a correct answer to the group want to repair?
  Q3. Dividing by the std made question 0's lone right answer push 2x harder. Is that good?
      (Compare a group with one right answer in four with one with two in four.)

Grade:  pytest exercises/test_00_grpo_warmup.py
"""
from __future__ import annotations

GROUPS = [
    [1, 0, 0, 0],   # question 0: one right answer in four
    [1, 0, 1, 1],   # question 1: three right
    [0, 0, 0, 0],   # question 2: all wrong
    [1, 1, 1, 1],   # question 3: all right
]


def answers() -> dict:
    raise NotImplementedError
