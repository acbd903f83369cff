"""demsr: super-resolution of digital elevation models with DEM-SRNet."""

__version__ = "0.1.0"
