"""eventwire"""
