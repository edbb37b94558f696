"""Encoders: one factory per kind (visual, audio, text, ASR); each takes a hub id or a local path."""
