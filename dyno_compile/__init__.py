"""dyno-compile: split CNN inference between a device and the cloud."""

__version__ = "0.1.0"
