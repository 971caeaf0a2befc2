"""The three-stage MobileVLM training recipe: data preparation, one loop for every stage, torchrun-ready."""
