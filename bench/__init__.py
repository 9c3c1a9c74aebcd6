"""
Benchmarks of ethtwisted, each a script printing one JSON object (see the README).
"""
