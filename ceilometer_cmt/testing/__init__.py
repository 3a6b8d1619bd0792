"""What the tests and the demo run beside the plugin: stand-ins for the
processes a compute host has."""
