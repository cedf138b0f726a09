"""Built-in plugins, loaded through the `dialer.plugins` entry points like any other."""
