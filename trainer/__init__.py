"""Examples in: online models, replay buffer, prequential metrics, drift, checkpoints, model updates out."""
