"""`nnfund-spark benchmark`: throughput, scaling and time-to-accuracy against plain Keras,
measured side by side in one invocation (see ``suite`` for what is measured and how)."""
