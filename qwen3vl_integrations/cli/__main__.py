"""``python -m qwen3vl_integrations.cli``: the ``qwen3vl-search`` command."""
import sys

from .command_line import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
