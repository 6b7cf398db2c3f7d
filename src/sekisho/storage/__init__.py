"""Persistence: the only package that imports SQLAlchemy. Repositories return plain values."""
