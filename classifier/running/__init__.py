"""Running: the one assembly point (pipeline) and the ways to drive it (batch, live), with the flow record."""
