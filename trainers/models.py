"""Moved to landscape.models, below both packages; this alias is removed in the next release."""

from landscape.models import *  # noqa: F403
from trainers import _moved

_moved(__name__, "landscape.models")
