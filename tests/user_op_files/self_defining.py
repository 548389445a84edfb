"""A user op file as the docs show it: the file defines the op itself, at its top level (and a
second op with the decorator). Loading it in another process must register each op once."""
import os

import torch

import kforge

NAME = os.environ["KFORGE_TEST_OP"]


def reference(x):
    return x * 3


def make_inputs(shape, dtype, device, seed):
    return (torch.full(shape, 2.0, dtype=dtype, device=device),)


tripled = kforge.define_op(NAME, "(Tensor x) -> Tensor", reference, make_inputs, shapes=[(2, 2)])


@kforge.op("(Tensor x) -> Tensor", make_inputs, shapes=[(2, 2)], name=NAME + "_neg")
def negated(x):
    return -x
