"""Grades exercises/ex06_mixing.py:  pytest exercises/test_06_mixing.py"""
from exercises import ex06_mixing as ex
from exercises.graders import check_mix as check


def test_ex06_mixing():
    check(ex.mix_groups)
