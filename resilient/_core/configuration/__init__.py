"""Configuration: options declared once, read from code and the environment, registered."""
