"""Moved to landscape.checkpoint, below both packages; this alias is removed in the next release."""

from landscape.checkpoint import *  # noqa: F403
from trainers import _moved

_moved(__name__, "landscape.checkpoint")
