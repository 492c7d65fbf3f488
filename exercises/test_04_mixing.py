"""Grades exercises/ex04_mixing.py:  pytest exercises/test_04_mixing.py"""
from exercises import ex04_mixing as ex
from exercises.graders import check_mix as check


def test_ex04_mixing():
    check(ex.mix_groups)
