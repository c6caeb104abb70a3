"""The ``textgym`` command: one entry point, each subcommand implemented next to the code it drives.

``textgym reward ...`` runs :mod:`reward_models.cli`, ``textgym label ...`` :mod:`reward_models.labelling.cli`,
``textgym train ...`` :mod:`agents.cli` and ``textgym bench ...`` :mod:`agents.bench.cli`; they are imported only
when named, so ``textgym --help`` answers at once.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "reward": ("reward_models.cli", "train and evaluate reward models, make synthetic preference data"),
    "train": ("agents.cli", "train an LM policy (SFT, PPO, GRPO, RLOO) on a textgym environment"),
    "bench": ("agents.bench.cli", "benchmark algorithms on the task suite (seeds, token budget, rliable)"),
    "label": ("reward_models.labelling.cli", "collect human preferences on a local web page, export them"),
}


def _usage() -> str:
    lines = ["usage: textgym COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `textgym COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to a subcommand's ``main``; return its exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"textgym: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # Set before torch loads, PyTorch's CPU allocator backs tensors of 2 MB and more with transparent huge
    # pages: far fewer page faults on the large tensors an update allocates afresh every step (a bf16 update of
    # the embedded model takes a fifth less time; README § Performance). The user's own setting wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:], prog=f"textgym {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
