"""The pipeline's stages, one per module: extract, train_head, predict, info."""
