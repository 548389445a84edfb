# coding: utf_7
"""Cheat: a coding declaration. The check reads the file as UTF-8, where the last line is a
comment; compiled from its bytes, Python decodes it as UTF-7, where "+AAo-" is a newline, and
the comment becomes a forward that calls vendor's op. Caught statically: Rule.ENCODING (and the
loader compiles the checked text, never the bytes)."""
import torch


def forward(x, weight, eps=1e-6):
    return torch.empty_like(x)

# +AAo-forward = lambda x, weight, eps=1e-6: torch.rms_norm(x, x.shape[-1:], weight, eps)
