"""Deliveries: signing, the HTTP deliverer, the retry scheduler and the fan-out."""
