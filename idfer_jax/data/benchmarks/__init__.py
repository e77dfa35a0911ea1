"""TFDS builders for the FER benchmarks; each needs a manual download (its MANUAL_DOWNLOAD_INSTRUCTIONS)."""
