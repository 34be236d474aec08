"""The course's fundamentals as code: activation functions and the worked neuron examples."""
