"""Writing trained SAEs in the formats the ecosystem loads."""
