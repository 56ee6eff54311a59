"""`amnesiac reproduce <name>`: published protocols re-run end to end on what is available offline
(TOFU's own data on the tiny model; SmolLM2-135M from its PyPI wheel). One module per protocol."""
