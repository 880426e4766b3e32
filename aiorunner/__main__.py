"""``python -m aiorunner``: the same as the ``aiorunner`` command."""

from .cli import main

if __name__ == "__main__":
    main()
