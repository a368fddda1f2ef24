"""Models: encoders, MIL heads and the A-MIL model, the model folder's config and files, foreign
checkpoints (CLAM, ABMIL) and the patches fitted to a model's input."""
