"""The pipeline engine (private): contexts, environment, messages, runner, lifecycle."""
