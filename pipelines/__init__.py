"""End-to-end runs that compose the library's stages (sources, training, evaluation, export)."""
