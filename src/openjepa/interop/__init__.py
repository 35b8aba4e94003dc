"""openjepa.interop"""
