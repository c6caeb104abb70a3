"""The ``textgym`` command: one entry point, each subcommand implemented next to the code it drives.

``textgym reward ...`` runs `reward_models.cli`, ``textgym label ...`` `reward_models.labelling.cli`,
``textgym train ...`` `agents.cli`, ``textgym bench ...`` `agents.bench.cli` and ``textgym rlhf ...``
`agents.rlhf.cli`. The command line is
the top layer, so it imports them, but only the one named, so ``textgym --help`` answers at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

MainFn = Callable[..., int]


def _reward() -> MainFn:
    from reward_models.cli import main

    return main


def _train() -> MainFn:
    from agents.cli import main

    return main


def _bench() -> MainFn:
    from agents.bench.cli import main

    return main


def _rlhf() -> MainFn:
    from agents.rlhf.cli import main

    return main


def _label() -> MainFn:
    from reward_models.labelling.cli import main

    return main


COMMANDS: dict[str, tuple[Callable[[], MainFn], str]] = {
    "reward": (_reward, "train and evaluate reward models, make synthetic preference data"),
    "train": (_train, "train an LM policy (SFT, PPO, GRPO, RLOO) on a textgym environment"),
    "bench": (_bench, "benchmark algorithms on the task suite (seeds, token budget, rliable)"),
    "label": (_label, "collect human preferences on a local web page, export them"),
    "rlhf": (_rlhf, "the InstructGPT loop, iterated: sample, label, reward model, RL, round after round"),
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
    # the embedded model takes a fifth less time; docs/performance.md). The user's own setting wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    command_main = COMMANDS[argv[0]][0]()
    return command_main(argv[1:], prog=f"textgym {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
