"""meter: a SIP/H.323 license-metering node."""
__version__ = "0.1.0"
