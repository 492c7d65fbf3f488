"""Grades exercises/ex03_refinement_prompt.py:  pytest exercises/test_03_refinement_prompt.py"""
from exercises import ex03_refinement_prompt as ex
from exercises.graders import check_refinement_prompt as check


def test_ex03_refinement_prompt():
    check(ex.refinement_prompt)
