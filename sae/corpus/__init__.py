"""The generated language with known latent variables, and the tiny model bundled with it."""
