r"""Exercise 3 (implement): the refinement prompt (step 4), character for character.

The policy refines an answer given its critique with this user message (the paper's, step 4 of
docs/algorithm.md; the system message is "You are a helpful assistant."):

    Given the following inputs:
    **Question**: {question}
    **Previous Solution**: {previous}
    **Critique**: {critique}

    Please re-answer by:
    - Correcting potential errors identified in the critique, if they exist.
    - Providing clear, step-by-step reasoning.
    - Formatting the final answer as `\boxed{answer}`.

    Ensure the revised solution addresses all issues raised in the critique.

(without the 4-space indent of this docstring, with no newline at the end; `\boxed{answer}` is
literal text: a backslash, "boxed", and the word "answer" in braces.) Fill in the three fields
exactly once each: text that itself looks like a field ("{critique}", "{x}") stays as it is.
A changed word, space or line break changes the tokens the policy sees and what it was tuned on.

Questions for yourself (not graded; your instructor has the answers):
  Q1. The refinement is later trained as an answer to the *bare* question, not to this prompt.
      Which words of this prompt can leak into the refinement's text, and why does that matter
      (exercise 9)?
  Q2. A critique that itself contains "{question}": what must happen to it, and what would a
      template that is filled field by field with str.replace do?

Grade:  pytest exercises/test_03_refinement_prompt.py
"""
from __future__ import annotations


def refinement_prompt(question: str, previous: str, critique: str) -> str:
    raise NotImplementedError
