"""One file per SAE architecture. A file here is an architecture: its name is the `sae.arch`
value, and it declares everything about itself (see sae/models/registry.py)."""
