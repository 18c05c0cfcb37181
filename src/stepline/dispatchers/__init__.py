"""Dispatcher implementations; the contract is in :mod:`stepline.dispatchers.base`."""
