"""What a model costs and what it found, measured rather than exported: complexity (parameters,
MACs, activation memory), benchmark (clips/s on every engine) and plots (pictures of detections).

    from paddle_soundcls.analysis.complexity import complexity, check_budget
    from paddle_soundcls.analysis import benchmark
    benchmark.run('panns_cnn6', seconds=1.0)

Nothing is imported here: the benchmark of an export directory runs without Paddle, and the
Module may use these modules without importing them at start-up.
"""
