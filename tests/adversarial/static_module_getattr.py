"""Cheat: a module-level __getattr__ runs whenever kforge reads an attribute the module lacks
(DOMAIN, SEARCH_SPACE): code at load time, in the user's process, and a DOMAIN that changes
between reads. Caught statically: Rule.DYNAMIC (no special names)."""
import torch
import triton
import triton.language as tl



def __getattr__(name):
    return {"dtypes": None, "contiguous": False, "align": 1}


def forward(x, weight, eps=1e-6):
    return torch.empty_like(x)
