"""Grades exercises/ex08_shaping_entropy.py:  pytest exercises/test_08_shaping_entropy.py"""
from exercises import ex08_shaping_entropy as ex
from exercises.graders import check_08 as check


def test_ex08_shaping_entropy():
    check(ex.answers)
