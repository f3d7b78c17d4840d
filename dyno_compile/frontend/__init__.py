"""Frontends: turn models written elsewhere (ONNX files, JAX functions) into the graph IR."""
