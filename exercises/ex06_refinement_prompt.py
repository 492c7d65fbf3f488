r"""Exercise 6 (implement): the refinement prompt (step 4), character for character.

The policy refines an answer given its critique with this user message (the paper's, from
../shared/ALGORITHM.md step 4; the system message is "You are a helpful assistant."):

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

Grade:     pytest exercises/test_06_refinement_prompt.py
Solution:  critique.refinement_prompt and critique.REFINE_TEMPLATE.
"""
from __future__ import annotations


def refinement_prompt(question: str, previous: str, critique: str) -> str:
    raise NotImplementedError
