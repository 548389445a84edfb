"""Cheat: allocates the output and launches nothing (on a GPU the caching allocator may hand it
the reference's freed result, which then "matches").
Caught dynamically: every element still holds the NaN poison (Check.UNWRITTEN, "wrote none of
the output"); the reference outputs stay alive during the call, so their memory is never reused."""
import torch

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere


def forward(x):
    return torch.empty_like(x)
