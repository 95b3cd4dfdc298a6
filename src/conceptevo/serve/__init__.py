"""The dashboard: JSON API over a workspace and its page (static/)."""
