"""Thin DVC stages: read parameters and inputs, call `pipeline`, write outputs."""
