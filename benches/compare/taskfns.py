"""The trivial task functions of the scheduler-overhead workload.

They live in a module of their own, importing nothing, because workers import the module a
pickled function names on their first task: from `engines` that would be polars and NumPy
(0.35 s per worker), timed as if it were scheduling.
"""


def inc(i):
    return i + 1


def total(xs):
    return sum(xs)
