"""Seeded random arrays: the same seed gives the same numbers whatever the chunking."""

from . import _partita
from .array import Array, _shape


def random(shape, chunks="auto", seed=0):
    """Uniform on [0, 1)."""
    return Array(_partita.random_uniform(_shape(shape), 0.0, 1.0, chunks, seed))


def uniform(low=0.0, high=1.0, size=None, chunks="auto", seed=0):
    """Uniform on [low, high)."""
    return Array(_partita.random_uniform(_shape(size), float(low), float(high), chunks, seed))


def normal(loc=0.0, scale=1.0, size=None, chunks="auto", seed=0):
    """Normal with mean `loc` and standard deviation `scale`."""
    return Array(_partita.random_normal(_shape(size), float(loc), float(scale), chunks, seed))


def integers(low, high, size=None, chunks="auto", seed=0):
    """Integers on [low, high)."""
    return Array(_partita.random_integers(_shape(size), int(low), int(high), chunks, seed))
