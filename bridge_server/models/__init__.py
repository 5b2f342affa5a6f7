"""Model files: the folder layout, listing and verifying what is installed, and downloading what is missing."""
