"""The relay tests here use the use-case fixtures (the SQL store on a seeded SQLite copy)."""

from tests.usecases.conftest import World, clock, store, world

__all__ = ["World", "clock", "store", "world"]
