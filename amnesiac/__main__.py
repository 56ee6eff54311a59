"""`python -m amnesiac`."""
from .cli import main

main()
