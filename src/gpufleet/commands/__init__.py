"""One module per group of `gpufleet` commands; gpufleet.cli only parses and dispatches."""
