"""The fault registry every faulty program shares: `@fault(name)` registers a patch of the
reference, and the program's command line (`--fault NAME ...`) applies one before it runs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

Fault = Callable[[], None]


class FaultRegistry:
    """The faults of one faulty program, by name; called as a decorator to register one."""

    def __init__(self, module: str, usage_tail: str, *, takes_arguments: bool = True) -> None:
        self.module, self.usage_tail, self.takes_arguments = module, usage_tail, takes_arguments
        self.faults: dict[str, Fault] = {}

    def __call__(self, name: str) -> Callable[[Fault], Fault]:
        def register(apply: Fault) -> Fault:
            self.faults[name] = apply
            return apply

        return register

    def apply_from(self, args: Sequence[str]) -> list[str] | None:
        """Apply the fault `--fault NAME` names; the arguments after it, or None after printing the
        usage (an unknown fault, or arguments where the program takes none)."""
        wanted = args[1] if len(args) >= 2 and args[0] == "--fault" else None
        if wanted not in self.faults or (len(args) > 2 and not self.takes_arguments):
            known = ", ".join(sorted(self.faults))
            tail = f" {self.usage_tail}" if self.usage_tail else ""
            print(f"usage: python -m {self.module} --fault NAME{tail}; NAME: {known}", file=sys.stderr)
            return None
        self.faults[wanted]()
        return list(args[2:])
