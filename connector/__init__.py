"""dmp-connector: feeds the French DMP with a structure's documents."""
__version__ = "0.1.0"
