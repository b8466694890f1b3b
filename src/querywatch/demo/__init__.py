"""The reference shop app and the outage replay behind ``querywatch demo``."""
