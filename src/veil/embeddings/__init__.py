"""Text embeddings computed on the device (``minilm``: all-MiniLM-L6-v2 in numpy)."""
