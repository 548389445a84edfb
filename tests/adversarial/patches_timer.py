"""Cheat: slows the clock the harness times with, so the kernel looks fast.
Caught statically: Rule.PATCH (assignment to time.perf_counter; importing time is also outside
the allow-list)."""
import time

import torch

_real = time.perf_counter
time.perf_counter = lambda: _real() / 100.0


def forward(x):
    return torch.empty_like(x)
