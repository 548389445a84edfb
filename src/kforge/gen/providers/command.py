"""The `command` provider: any program as the model. The prompt goes to its stdin (messages under
"## system" / "## user" / "## assistant" headers), its stdout is the answer. No shell: the command
is an argv list (KFORGE_COMMAND or --command, split like a shell would). The program inherits this
process's environment: the user chose it, as they would run it by hand.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Sequence

from kforge.gen.config import ProviderConfig
from kforge.gen.types import Completion, GenerationContext, Message, Provider, ProviderError, Usage

HOW_TO_SET = "set KFORGE_COMMAND or pass --command (e.g. --command 'my-agent --stdin')"


def render(messages: Sequence[Message]) -> str:
    """The prompt as the program reads it: "## system\\n...\\n\\n## user\\n...\\n"."""
    return "\n\n".join(f"## {m.role.value}\n{m.content}" for m in messages) + "\n"


def _tail(text: str, lines: int = 3, chars: int = 300) -> str:
    return " ".join(" ".join(text.strip().splitlines()[-lines:]).split())[-chars:]


class CommandProvider(Provider):
    name = "command"

    def __init__(self, config: ProviderConfig):
        if not config.command:
            raise ProviderError(f"provider 'command' needs a program: {HOW_TO_SET}")
        self.config = config
        self.model = config.model_name

    def complete(self, messages: Sequence[Message], *, context: GenerationContext | None = None,
                 **params: Any) -> Completion:
        """Runs the program once; temperature and max_tokens are the program's business."""
        argv = list(self.config.command)
        program = argv[0]
        start = time.monotonic()
        try:
            # A session of its own, so that a timeout kills the program and everything it started.
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    encoding="utf-8", errors="replace", start_new_session=True)
        except OSError as exc:
            raise ProviderError(f"command provider: cannot run {program!r}: {exc.strerror or exc}; "
                                f"check KFORGE_COMMAND / --command") from None
        try:
            out, err = proc.communicate(render(messages), timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            raise ProviderError(f"command provider: {program} gave no answer within {self.config.timeout_s:g} s; "
                                "killed it (raise --timeout / KFORGE_TIMEOUT_S)") from None
        except BaseException:  # KeyboardInterrupt: leave no orphan behind
            self._kill(proc)
            raise
        latency = time.monotonic() - start
        if proc.returncode != 0:
            raise ProviderError(f"command provider: {program} exited with {proc.returncode}: "
                                f"{_tail(err) or '(no stderr)'}")
        if not out.strip():
            raise ProviderError(f"command provider: {program} wrote nothing to stdout"
                                + (f" (stderr: {_tail(err)})" if err.strip() else ""))
        # Token counts are unknown for an arbitrary program: zeros, and no cost.
        return Completion(text=out, provider=self.name, model=self.model, usage=Usage(), latency_s=latency)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:  # a grandchild that left the group could hold the pipes open: do not wait on it forever
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
