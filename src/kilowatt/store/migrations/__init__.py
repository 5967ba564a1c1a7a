"""Alembic migrations of the tracking store; ``kilowatt.store`` runs them on open."""
