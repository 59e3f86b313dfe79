"""What the runner needs that is not math: loggers, checkpoints, plots, sweep reports, config checks."""
