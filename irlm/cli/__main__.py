"""`python -m irlm.cli`."""

from irlm.cli import run

run()
