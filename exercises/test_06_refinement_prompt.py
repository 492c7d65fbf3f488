"""Grades exercises/ex06_refinement_prompt.py:  pytest exercises/test_06_refinement_prompt.py"""
from exercises import ex06_refinement_prompt as ex
from exercises.graders import check_refinement_prompt as check


def test_ex06_refinement_prompt():
    check(ex.refinement_prompt)
