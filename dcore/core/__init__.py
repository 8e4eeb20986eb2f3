"""The pipeline model: contexts, plugins, interfaces, environment, messages, runner."""
