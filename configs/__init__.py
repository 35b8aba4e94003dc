"""The released and CPU recipes, shipped inside the package as ``openjepa.recipes``."""
