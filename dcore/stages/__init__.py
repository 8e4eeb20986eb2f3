"""Built-in Execute plugins."""
