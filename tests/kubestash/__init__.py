"""KubeStash's executors unchanged: the upstream Functions run through the contract test executor."""
