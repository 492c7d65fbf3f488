"""Grades exercises/ex07_policy_loss.py:  pytest exercises/test_07_policy_loss.py"""
from exercises import ex07_policy_loss as ex
from exercises.graders import check_policy_loss as check


def test_ex07_policy_loss():
    check(ex.policy_loss, ex.aggregate)
