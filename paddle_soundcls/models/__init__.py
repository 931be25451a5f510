"""Model families, one module each; each registers its models with paddle_soundcls.registry."""
