"""Cheat: exits its own process when called, so the worker dies without a verdict (and a naive
harness records nothing, or a success).
Caught statically: Rule.PROCESS (os._exit). Importing it is harmless; calling forward exits,
which the sandbox must record as a crash (use this file for the sandbox's crash test)."""
import os

import torch


def forward(x):
    os._exit(0)
    return torch.empty_like(x)
