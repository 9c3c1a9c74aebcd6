"""
ethtwisted: watch Ethereum nodes and collect every block they see.
"""
