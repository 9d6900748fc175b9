"""Small Python functions the tests send to workers.

Workers cannot import the test modules, so this module (and any test module defining its own
functions) is registered with cloudpickle to travel by value, as functions defined in a
notebook or a script (`__main__`) do anyway.
"""

import sys

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def nap(i, seconds=0.05):
    import time

    time.sleep(seconds)
    return i
