"""Model families, one module each, and what they share: registry (architectures and pretrained
weights by name), base (the backbone contract), layers, builder (weights into networks).

Paddle-free to import: the families, which import Paddle, are registered on first use of the registry.
"""
