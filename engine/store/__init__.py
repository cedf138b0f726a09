"""Campaign state: one async interface (``base.Store``), in-memory and Redis implementations."""

from engine.store.base import AbandonCounts, Caps, DialContext, Reservation, Store, StoreUnavailable

__all__ = ["AbandonCounts", "Caps", "DialContext", "Reservation", "Store", "StoreUnavailable"]
