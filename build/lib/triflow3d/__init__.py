"""triflow3d: text-to-3D generation with a frozen feed-forward reconstruction model as latent encoder.

Importing the package is cheap: no heavy subpackage is imported here, nothing reads the environment.
"""

__version__ = "0.1.0"
