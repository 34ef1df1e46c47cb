"""Harmony: omnichannel routing middleware between a CRM and a telephony ACD."""

__version__ = "0.1.0"
