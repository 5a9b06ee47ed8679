"""Data side of ddpm-pipeline: image folders -> verified shards -> augmented, class-balanced batches."""
