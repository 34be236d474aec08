"""Data preparation: raw image sources -> Petastorm Parquet splits with a manifest."""
