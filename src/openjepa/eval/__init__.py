"""openjepa.eval"""
