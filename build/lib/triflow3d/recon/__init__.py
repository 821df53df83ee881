"""Training, evaluating and exporting our own small reconstructor (``lrm-small``); see ``recon.cli``."""
