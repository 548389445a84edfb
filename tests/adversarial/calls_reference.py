"""Cheat: imports the op's reference from kforge and returns its result.
Caught statically: Rule.KFORGE (a candidate may not import kforge)."""
import torch
from kforge.specs.rms_norm import reference


def forward(x, weight, eps=1e-6):
    return reference(x, weight, eps)
