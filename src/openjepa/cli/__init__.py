"""openjepa.cli"""
