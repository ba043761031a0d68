"""The validator: proof checks, mystery-shopper audits, fraud cases and reputation."""
