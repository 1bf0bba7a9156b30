"""`python -m jaxseg train|evaluate|predict|export ...`."""

from jaxseg.commands import main

main()
