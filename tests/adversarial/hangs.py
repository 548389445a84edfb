"""Cheat (or a bug): spins forever once called, stalling the evaluator.
Caught statically: Rule.HANG (while True). Importing it is harmless; calling forward never
returns, which the sandbox's timeout must catch (use this file for the sandbox's hang test)."""
import torch


def forward(x):
    y = torch.empty_like(x)
    while True:
        pass
    return y
