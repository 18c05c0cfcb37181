"""Store implementations; the contract is in :mod:`stepline.stores.base`."""
