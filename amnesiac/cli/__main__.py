"""`python -m amnesiac.cli` (what `torchrun` / `accelerate launch -m amnesiac.cli` run)."""
from . import main

main()
