"""The commands: one module each, behind the top-level scripts, plus what they share (base)."""
