pytest_plugins = ["localkube.pytest_plugin"]
