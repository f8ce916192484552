"""The package version and name (its own module, so that modules can read them without importing the package)."""
__version__ = "0.1.0"
PACKAGE = "sharpdro"  # the distribution, program and default tracker project name
