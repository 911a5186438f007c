"""Storage experiments: zLLM/BitX model-hub compression and algorithmic-complexity attacks on ALEX."""
