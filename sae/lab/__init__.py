"""Known results reproduced on toy models (`sae lab ...`)."""
