"""``python -m minipeft.world``: write the embedded world into data/."""

from .files import main

main()
