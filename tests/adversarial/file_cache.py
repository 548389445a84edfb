"""Cheat: keeps results in a file between runs (reads a cached answer, writes new ones), which
also lets it see what another process left there.
Caught statically: Rule.FILESYSTEM (open())."""
import torch


def forward(x):
    path = "/tmp/softmax_cache.bin"
    y = torch.empty_like(x)
    with open(path, "ab") as f:
        f.write(b"seen\n")
    return y
