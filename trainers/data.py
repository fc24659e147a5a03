"""Moved to landscape.data, below both packages; this alias is removed in the next release."""

from landscape.data import *  # noqa: F403
from trainers import _moved

_moved(__name__, "landscape.data")
