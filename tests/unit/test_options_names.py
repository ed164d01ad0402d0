"""The option names the CLI checks without importing torch match what the library accepts."""

from irlm import options
from irlm.index.dense import BACKENDS
from irlm.models.pooling import POOLERS


def test_pooling_names_match_the_poolers():
    assert set(options.POOLINGS) == {*POOLERS, "token"}


def test_backend_names_are_the_index_backends():
    assert BACKENDS is options.BACKENDS
