"""``train.compile``: the method's forward through ``torch.compile``, eager where that fails.

``torch.compile`` compiles lazily, on the first call: a missing C compiler, an unsupported
operation or a backend error only shows then. :class:`CompiledForward` catches that failure,
prints one line naming it and runs that call and every later one eagerly, so a run with
``train.compile: true`` never stops because of the compiler. An error of the model itself
(a wrong shape, out of memory) is raised again by the eager call. The step that fell back
ran its forward twice: whatever the forward changed in place before the compiler gave up (a
batch-norm running mean, say) is then updated once more, in that one step only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class CompiledForward:
    """Calls ``torch.compile(module)`` until it fails once, then ``module`` itself.

    ``compiler``: what compiles the module (default ``torch.compile``, looked up at the call).
    ``failure``: the one-line reason of the fallback, None while compiled.
    """

    def __init__(self, module: nn.Module, compiler: Callable[[nn.Module], Callable] | None = None) -> None:
        self.module = module
        self.failure: str | None = None
        try:
            self.compiled: Callable | None = (compiler or torch.compile)(module)
        except Exception as error:  # compile itself refused (an unsupported Python, say)
            self._fall_back(error)

    def _fall_back(self, error: BaseException) -> None:
        self.failure = _first_line(error)
        self.compiled = None
        print(f"selfsup: train.compile failed ({self.failure}); continuing eager", file=sys.stderr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:
                self._fall_back(error)
        return self.module(*args, **kwargs)
