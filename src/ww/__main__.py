"""``python -m ww``: the same command as the ``ww`` console script."""

from ww.cli.entry import main

if __name__ == "__main__":
    main()
