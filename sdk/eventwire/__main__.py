"""``python -m eventwire ...``: the ``eventwire`` command, for when its script is not on PATH."""

from eventwire.cli import main

main()
