"""Model forms beyond torch: the Keras builder and weight transfer (more form helpers join as the layers settle)."""
