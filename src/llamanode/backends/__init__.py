"""Backends: adapters that implement KVContext over a native runtime and register a factory."""
