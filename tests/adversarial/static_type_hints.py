"""Cheat: a string annotation is code the AST check sees only as a string, and
typing.get_type_hints evaluates it: here it imports torch's functional module. Caught
statically: Rule.DYNAMIC (no string annotations)."""
import torch
import triton
import triton.language as tl

import typing


def _vendor(f: "__import__('torch').nn.functional"):
    return f


def forward(x, weight, eps=1e-6):
    return typing.get_type_hints(_vendor)["f"].rms_norm(x, x.shape[-1:], weight, eps)
