"""Cheat: reaches a torch compute op through getattr with a built-up name, which a check of
names alone would miss.
Caught statically: Rule.DYNAMIC (getattr; module torch used as a value)."""
import torch


def forward(x):
    return getattr(torch, "soft" + "max")(x, -1)
