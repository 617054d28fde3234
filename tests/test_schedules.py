"""Learning-rate schedules against their formulas (the lecture's four forms and staircase)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusedopt import schedules

counts = st.integers(1, 100_000)
rates = st.floats(1e-6, 10.0)


def test_lecture_table():
    """The lecture: alpha0 = 0.2, decay_rate = 1 gives 0.1, 0.067, 0.05, 0.04 for epochs 1-4."""
    s = schedules.inverse_time(0.2, 1.0)
    assert [round(s(t), 3) for t in (1, 2, 3, 4)] == [0.1, 0.067, 0.05, 0.04]


@given(rates, st.floats(0.0, 10.0), counts)
def test_inverse_time(lr0, decay_rate, t):
    assert schedules.inverse_time(lr0, decay_rate)(t) == pytest.approx(lr0 / (1 + decay_rate * t))


@given(rates, st.floats(0.0, 1.0), counts)
def test_exponential(lr0, base, t):
    assert schedules.exponential(lr0, base)(t) == pytest.approx(lr0 * base**t)
    assert schedules.exponential(lr0)(t) == pytest.approx(lr0 * 0.95**t)


@given(rates, st.floats(0.0, 10.0), counts)
def test_inverse_sqrt(lr0, k, t):
    assert schedules.inverse_sqrt(lr0, k)(t) == pytest.approx(lr0 * k / math.sqrt(t))


@given(rates, st.floats(0.0, 1.0), st.integers(1, 50), counts)
def test_staircase(lr0, factor, every, t):
    s = schedules.staircase(lr0, factor, every)
    assert s(t) == pytest.approx(lr0 * factor ** ((t - 1) // every))


def test_staircase_steps_every_n():
    s = schedules.staircase(1.0, factor=0.5, every=3)
    assert [s(t) for t in range(1, 10)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]


@pytest.mark.parametrize("make", [
    lambda: schedules.inverse_time(0.1, 1.0), lambda: schedules.exponential(0.1),
    lambda: schedules.inverse_sqrt(0.1, 1.0), lambda: schedules.staircase(0.1, 0.5, 2),
    lambda: schedules.constant(0.1),
])
def test_decay_is_monotone_and_counts_from_one(make):
    s = make()
    values = [s(t) for t in range(1, 200)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError, match="count from 1"):
        s(0)
    with pytest.raises(TypeError, match="int"):
        s(1.5)


@pytest.mark.parametrize("make, word", [
    (lambda: schedules.inverse_time(-0.1, 1.0), "lr0"),
    (lambda: schedules.inverse_time(0.1, float("nan")), "decay_rate"),
    (lambda: schedules.exponential(0.1, 1.5), "base"),
    (lambda: schedules.inverse_sqrt(0.1, -1.0), "k"),
    (lambda: schedules.staircase(0.1, 0.5, 0), "every"),
])
def test_bad_schedule_arguments(make, word):
    with pytest.raises(ValueError, match=word):
        make()
