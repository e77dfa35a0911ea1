"""TFDS builders for the FER benchmarks. Each needs a manual download; see its MANUAL_DOWNLOAD_INSTRUCTIONS."""
