"""Model forms beyond torch: the Keras weight transfer (and, as the layers settle, the ONNX export and quantization helpers)."""
