"""The activation store: the durable hand-off between harvesting and training.

format.py (manifest, shard layout, hashes) -> writer.py (atomic, resumable harvest) ->
reader.py (verified reads, the resumable partitioned stream; order.py is its seeded order)
-> verify.py (`sae store verify/info`), saelens_cache.py (SAELens's cached-activations format).
"""
