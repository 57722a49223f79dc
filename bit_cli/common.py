"""What the bit_cli commands share: their absl start-up and `--help`.

Example:
    >>> from bit_cli import common
    >>> common.run(main, __name__)  # in a command's `run()`, its console-script entry point
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags


def declare_main_module_flags(
    module_name: str, flag_values: flags.FlagValues = flags.FLAGS
) -> None:
    """Makes the flags of `module_name` key flags of the main module, so `--help` lists them.

    absl's `--help` lists the key flags of the main module, which it knows by `sys.argv[0]`.
    Under `python -m bit_cli.finetune` that is the module defining the flags; under the
    `bit-finetune` console script it is the script, which defines none, so `--help` would list
    nothing. This declares the module's flags as key flags of `sys.argv[0]` (a no-op where they
    already are), and gives a main module without a docstring (the console script) the
    module's, which `--help` prints as the usage text.

    Example:
        >>> declare_main_module_flags("bit_cli.finetune")
        >>> "--weights" in flags.FLAGS.main_module_help()
        True
    """
    main_module_name = sys.argv[0]  # the name absl's --help looks the key flags up by
    for flag in flag_values.get_key_flags_for_module(module_name):
        flag_values.register_key_flag_for_module(main_module_name, flag)
    main, module = sys.modules.get("__main__"), sys.modules.get(module_name)
    if main is not None and module is not None and not main.__doc__:
        main.__doc__ = module.__doc__


def run(main: Callable[[list[str]], int | None], module_name: str) -> None:
    """Runs a command's `main` under absl, with `--help` listing the command's own flags.

    Args:
        main: the command's main function (absl's: takes argv, returns the exit status).
        module_name: the `__name__` of the module defining the command's flags.

    Example:
        >>> def run() -> None:
        ...     common.run(main, __name__)
    """
    declare_main_module_flags(module_name)
    app.run(main)
