"""Results on disk: the history folder (PNG + provenance JSON) and where the data folder lives."""
