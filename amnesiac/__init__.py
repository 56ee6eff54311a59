"""amnesiac: did the model really forget, or does the knowledge come back?"""
__version__ = "0.1.0"
