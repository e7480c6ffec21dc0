"""fleetwarden: keeps an AWS organization's EC2 fleet safe and accountable."""

__version__ = "0.1.0"
