"""Adapters: the CRM and ACD ends of Harmony, behind the routing core's ports."""
