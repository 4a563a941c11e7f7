"""KubeStash's executor contract, spoken by a test program the node agent runs for the upstream images."""
