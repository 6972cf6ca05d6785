"""Independent seeds for every random stream of a run, derived from the one config seed.

Ad-hoc offsets (seed + 1, seed + 2) collide: sae_lens's feature dictionary and our decoder
init both drawing randn(n, d) from `seed` would start the SAE at the ground truth. Hashing the
seed with the stream's name gives streams that cannot coincide by accident.
"""

import hashlib


def derive_seed(seed: int, stream: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)
