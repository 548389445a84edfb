"""Errors kforge raises. Each names the op and, where there is one, the argument at fault."""
from __future__ import annotations


class KforgeError(Exception):
    """Base class of every error kforge raises on purpose."""


class KforgeInputError(KforgeError, ValueError):
    """A call's arguments are invalid for the op: wrong dtype, rank, device mix or size."""

    def __init__(self, op: str, arg: str, message: str):
        self.op = op
        self.arg = arg
        super().__init__(f"kforge.{op}: argument '{arg}' {message}")


class KforgePinError(KforgeError, RuntimeError):
    """A pinned implementation cannot serve a call; pins never fall back silently."""

    def __init__(self, op: str, impl: str, reason: str):
        self.op = op
        self.impl = impl
        super().__init__(f"kforge.{op}: pinned implementation '{impl}' cannot serve this call: {reason}")


class UnknownNameError(KforgeError, KeyError):
    """A name (op, backend, implementation) that is not registered; lists the valid ones."""

    def __init__(self, what: str, name: str, valid):
        self.what = what
        self.name = name
        super().__init__(f"unknown {what} '{name}'; valid: {', '.join(sorted(valid)) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class TableError(KforgeError):
    """A score-table file that cannot be trusted: corrupt, foreign schema version, wrong content."""
